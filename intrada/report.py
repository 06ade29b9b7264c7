"""The offline report (`make report`): one self-contained HTML file holding the metrics
tables and every plot `dvc plots show` draws, with no network needed to open it.

The charts are DVC's own: `dvc plots show --json` fills the Vega-Lite templates of
dvc.yaml's `plots` with the workspace's data, and vl-convert (Vega and Vega-Lite
bundled, no browser) renders each spec to SVG. Charts and images are embedded as
`data:` URIs, so the file can be mailed or copied off a cluster node as it is.

    python -m intrada.report --out report.html

`--offline-template PATH` writes instead an HTML template for `dvc plots show
--html-template PATH` with the Vega libraries inlined, so that DVC's own page also draws
its charts offline (`make plots`).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from intrada.errors import IntradaError
from intrada.io import atomic_path

# Vega-Lite 5, as DVC's templates ($schema v5) and its page (vega-lite@5) use.
VEGA_LITE_VERSION = "5.21"

# Sections of the report: (heading, what it shows, which plot ids belong to it), in
# reading order; plots dvc.yaml adds later land in "Other plots".
SECTIONS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    (
        "The ranking",
        "How the inter model ranks target-train by entropy: the score histogram with the "
        "lambda cut (easy below, hard above), then the easiest and the hardest images with "
        "their entropy map, the inter prediction and, for easy images, the pseudo-label.",
        lambda plot: plot.startswith(("Ranking", "plots/gallery/")),
    ),
    (
        "Errors on target-val",
        "Per-class IoU of each model, and where each true class's pixels go (rows sum to 100 %).",
        lambda plot: plot.startswith(("Per-class IoU", "Confusion")),
    ),
    (
        "Training",
        "One chart per stage and kind; the iteration on x.",
        lambda plot: plot.startswith("Training"),
    ),
    (
        "Target-val panels",
        "Image | truth | each model's prediction | the last model's entropy.",
        lambda plot: plot.startswith("plots/panels/"),
    ),
)


def dvc_plots(root: Path, out_dir: Path) -> dict[str, Any]:
    """`dvc plots show --json` of the project at `root`: {"data": {plot id: [entries]},
    "errors": [...]}; image entries point at copies under `out_dir`."""
    command = ["dvc", "plots", "show", "--json", "-o", str(out_dir)]
    try:
        result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        raise IntradaError(
            "dvc: command not found; expected the project's environment (source .venv/bin/activate)"
        ) from None
    if result.returncode != 0:
        raise IntradaError(f"dvc plots show failed: {result.stderr.strip() or result.stdout}")
    start = result.stdout.find("{")  # anything DVC printed before its JSON
    try:
        return json.loads(result.stdout[start:])
    except json.JSONDecodeError as exc:
        raise IntradaError(f"dvc plots show --json: unreadable output ({exc})") from exc


def render_svg(spec: dict[str, Any]) -> str:
    """A Vega-Lite spec as an SVG document, rendered without a browser or network."""
    import vl_convert  # imported here: only the report needs it

    return vl_convert.vegalite_to_svg(spec, vl_version=VEGA_LITE_VERSION)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def chart_title(plot_id: str, spec: dict[str, Any]) -> str:
    title = spec.get("title")
    text = title.get("text") if isinstance(title, dict) else title
    return text or plot_id


def figures(plots: dict[str, Any], render: Callable[[dict], str] = render_svg) -> list[dict]:
    """One entry per plot of `dvc plots show --json`: {"id", "title", "kind" ("vega" or
    "image"), "uri"}: charts rendered to SVG, images read from their files."""
    entries = []
    for plot_id, items in plots.get("data", {}).items():
        for item in items:
            if item.get("type") == "vega":
                spec = item["content"]
                svg = render(spec).encode("utf-8")
                uri = data_uri(svg, "image/svg+xml")
                entries.append(
                    {"id": plot_id, "title": chart_title(plot_id, spec), "kind": "vega", "uri": uri}
                )
            elif item.get("type") == "image":
                png = Path(item["url"]).read_bytes()
                mime = "image/svg+xml" if item["url"].endswith(".svg") else "image/png"
                revisions = ", ".join(item.get("revisions", []))
                title = plot_id if revisions in ("", "workspace") else f"{plot_id} ({revisions})"
                entries.append(
                    {"id": plot_id, "title": title, "kind": "image", "uri": data_uri(png, mime)}
                )
    return entries


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.2f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MODEL_NAMES = {"source_only": "source only", "inter": "inter (AdvEnt)", "intra": "intra (IntraDA)"}


def metrics_tables(metrics: dict[str, Any]) -> str:
    """mIoU per model (with the snapshot keys evaluation adds), the ranking diagnostics
    and per-class IoU, from `metrics/eval.json`; first what the evaluation could not give
    (`not_available`: a target without labels)."""
    models = [m for m in metrics if m not in ("diagnostics", "not_available")]
    if not models:
        return "<p>No model metrics.</p>"
    keys = [k for k in metrics[models[0]] if k != "IoU"]
    parts = [
        f'<p class="note">Not available: {html.escape(why)}.</p>'
        for why in (metrics.get("not_available") or {}).values()
    ]
    parts += [
        "<h3>Target-val mIoU (%)</h3>",
        _table(
            ["model", *keys],
            [[MODEL_NAMES.get(m, m), *[metrics[m].get(k) for k in keys]] for m in models],
        ),
    ]
    if "diagnostics" in metrics:
        parts += [
            "<h3>Ranking diagnostics (inter model, target-train ground truth)</h3>",
            _table(["diagnostic", "value"], [[k, v] for k, v in metrics["diagnostics"].items()]),
        ]
    classes = list(metrics[models[0]].get("IoU", {}))
    if classes:
        parts += [
            "<h3>Per-class IoU on target-val (%)</h3>",
            _table(
                ["class", *[MODEL_NAMES.get(m, m) for m in models]],
                [[c, *[metrics[m]["IoU"].get(c) for m in models]] for c in classes],
            ),
        ]
    return "\n".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ccc; padding-top: 12px; }
p.note { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; padding: 6px; border: 1px solid #ddd; background: #fff; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; max-width: 640px; }
"""


def rounds_table(rounds: dict[str, dict[str, Any]]) -> str:
    """Later intra rounds (`metrics/rounds/round_<k>.json`): each round's model against
    the one it ranked with, and its ranking diagnostics."""
    rows = []
    for name, metrics in rounds.items():
        ranked_with, trained = [m for m in metrics if m not in ("diagnostics", "not_available")]
        diagnostics = metrics.get("diagnostics") or {}
        rows.append(
            [
                name,
                ranked_with,
                metrics[ranked_with].get("mIoU"),
                metrics[trained].get("mIoU"),
                diagnostics.get("pseudo_label_accuracy"),
            ]
        )
    return "\n".join(
        [
            "<h3>Intra rounds after the first (target-val mIoU %)</h3>",
            _table(["round", "ranked with", "its mIoU", "round's mIoU", "pseudo-label acc."], rows),
        ]
    )


def build_html(
    entries: list[dict],
    metrics: dict[str, Any] | None,
    context: list[str],
    errors: list[dict],
    rounds: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The report page: context lines, metrics tables (later intra rounds' too), then
    the plots by section."""
    sections: dict[str, list[dict]] = {name: [] for name, _, _ in SECTIONS}
    sections["Other plots"] = []
    for entry in entries:
        name = next((n for n, _, belongs in SECTIONS if belongs(entry["id"])), "Other plots")
        sections[name].append(entry)
    notes = {name: note for name, note, _ in SECTIONS}
    body = [
        "<h1>intrada report</h1>",
        *[f'<p class="note">{html.escape(line)}</p>' for line in context],
        "<h2>Metrics</h2>",
        metrics_tables(metrics) if metrics else "<p>No metrics file.</p>",
        rounds_table(rounds) if rounds else "",
    ]
    for name, items in sections.items():
        if not items:
            continue
        body.append(f"<h2>{html.escape(name)}</h2>")
        if name in notes:
            body.append(f'<p class="note">{html.escape(notes[name])}</p>')
        body.append('<div class="grid">')
        for entry in items:
            caption = html.escape(entry["title"])
            # A chart carries its title; an image is named by its file.
            under = f"<figcaption>{caption}</figcaption>" if entry["kind"] == "image" else ""
            body.append(
                f'<figure data-plot="{html.escape(entry["id"])}" data-kind="{entry["kind"]}">'
                f'<img alt="{caption}" src="{entry["uri"]}">{under}</figure>'
            )
        body.append("</div>")
    if errors:
        body.append("<h2>Not drawn</h2><ul>")
        for error in errors:
            text = f"{error.get('name', '?')}: {error.get('source', '')} ({error.get('type', '')})"
            body.append(f"<li>{html.escape(text)}</li>")
        body.append("</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>intrada report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def project_context(root: Path) -> list[str]:
    """One line on what produced the results: commit, dataset and the method's params."""
    lines = []
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    if commit.returncode == 0:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        lines.append(
            f"commit {commit.stdout.strip()}{' (with uncommitted changes)' if dirty else ''}"
        )
    params_path = root / "params.yaml"
    if params_path.is_file():
        raw = yaml.safe_load(params_path.read_text()) or {}
        parts = [f"data {raw.get('data', {}).get('name')}", f"seed {raw.get('seed')}"]
        parts.append(f"lambda {raw.get('lambda')}")
        for stage in ("inter", "intra"):
            section = raw.get(stage, {})
            parts.append(f"{stage} {section.get('method')} ({section.get('iterations')} it)")
        lines.append(", ".join(parts))
    return lines


def write_report(root: Path, out: Path, metrics_path: Path) -> dict[str, int]:
    """Render the project's plots and metrics into `out` (atomically); returns how many
    charts and images it holds."""
    with tempfile.TemporaryDirectory(prefix="intrada-report-") as tmp:
        plots = dvc_plots(root, Path(tmp))
        entries = figures(plots)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    rounds = {
        path.stem: json.loads(path.read_text())
        for path in sorted(
            (metrics_path.parent / "rounds").glob("round_*.json"),
            key=lambda p: int(p.stem.split("_")[1]),
        )
    }
    page = build_html(entries, metrics, project_context(root), plots.get("errors") or [], rounds)
    with atomic_path(out) as tmp_out:
        tmp_out.write_text(page, encoding="utf-8")
    return {
        "charts": sum(e["kind"] == "vega" for e in entries),
        "images": sum(e["kind"] == "image" for e in entries),
        "errors": len(plots.get("errors") or []),
    }


def offline_template() -> str:
    """An HTML page for `dvc plots show --html-template`: DVC's layout with the Vega,
    Vega-Lite and vega-embed libraries inlined instead of loaded from a CDN."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    bundle = bundle.replace("</script", "<\\/script")  # keep the inline script closed once
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<title>DVC Plot</title>\n"
        f"<script>{bundle}</script>\n"
        "<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n"
        "</body>\n</html>\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("report.html"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/eval.json"))
    parser.add_argument(
        "--offline-template",
        type=Path,
        help="write an HTML template for `dvc plots show --html-template` instead",
    )
    args = parser.parse_args()
    try:
        if args.offline_template is not None:
            with atomic_path(args.offline_template) as tmp:
                tmp.write_text(offline_template(), encoding="utf-8")
            print(f"wrote {args.offline_template}")
            return
        counts = write_report(Path("."), args.out, args.metrics)
    except IntradaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(
        f"wrote {args.out}: {counts['charts']} charts, {counts['images']} images"
        + (
            f", {counts['errors']} plot files not found (listed at the end)"
            if counts["errors"]
            else ""
        )
    )


if __name__ == "__main__":
    main()
