"""The offline report on hand-made `dvc plots show --json` output: every chart rendered
to SVG, every image embedded, the metrics tables, nothing fetched. (The end-to-end test
on a reproduced project is in test_dvc_pipeline.py.)"""

from __future__ import annotations

import base64
import re

from PIL import Image

from intrada.report import build_html, figures, render_svg


def line_chart(title: str) -> dict:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": title},
        "data": {"values": [{"step": "1", "loss": "0.5"}, {"step": "2", "loss": "0.25"}]},
        "mark": "line",
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": "loss", "type": "quantitative"},
        },
    }


METRICS = {
    "source_only": {"mIoU": 50.0, "IoU": {"road": 60.0, "sky": 40.0}},
    "intra": {"mIoU": 55.5, "IoU": {"road": 70.0, "sky": None}},
    "diagnostics": {"score_error_spearman": 0.73},
}


def test_report_embeds_each_chart_and_image_once_in_its_section(tmp_path):
    png = tmp_path / "easy_00.png"
    Image.new("RGB", (8, 4), (255, 0, 0)).save(png)
    plots = {
        "data": {
            "Training inter: learning rate": [{"type": "vega", "content": line_chart("lr")}],
            "Ranking: scores": [{"type": "vega", "content": line_chart("scores")}],
            "plots/gallery/easy_00.png": [
                {"type": "image", "revisions": ["workspace"], "url": str(png)}
            ],
        }
    }
    errors = [{"name": "Training intra: x", "source": "dvclive/x.tsv", "type": "FileNotFound"}]
    page = build_html(figures(plots), METRICS, ["commit abc"], errors)
    found = re.findall(
        r'data-plot="([^"]+)" data-kind="(\w+)"><img alt="[^"]*" src="([^"]+)"', page
    )
    assert [(p, k) for p, k, _ in found] == [  # sections in reading order
        ("Ranking: scores", "vega"),
        ("plots/gallery/easy_00.png", "image"),
        ("Training inter: learning rate", "vega"),
    ]
    for _, kind, uri in found:
        data = base64.b64decode(uri.split(",", 1)[1])
        if kind == "vega":
            assert uri.startswith("data:image/svg+xml;base64,")
            assert data.startswith(b"<svg") and b"<path" in data  # the line itself
        else:
            assert uri.startswith("data:image/png;base64,") and data == png.read_bytes()
    assert page.index("<h2>The ranking</h2>") < page.index("<h2>Training</h2>")
    # Metrics tables: models by name, a missing IoU as a dash, the diagnostics.
    assert "<td>intra (IntraDA)</td><td>55.50</td>" in page
    assert "<td>sky</td><td>40.00</td><td>–</td>" in page
    assert "<td>score_error_spearman</td><td>0.73</td>" in page
    assert "dvclive/x.tsv" in page  # a plot DVC could not draw is named
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)


def test_charts_render_without_a_browser_or_network():
    svg = render_svg(line_chart("a title"))
    assert svg.startswith("<svg") and "a title" in svg


def test_report_tables_the_later_intra_rounds():
    rounds = {
        "round_2": {
            "intra": {"mIoU": 55.5},
            "round_2": {"mIoU": 56.25},
            "diagnostics": {"pseudo_label_accuracy": 91.0},
        }
    }
    page = build_html([], METRICS, [], [], rounds)
    assert "<h3>Intra rounds after the first (target-val mIoU %)</h3>" in page
    assert "<td>round_2</td><td>intra</td><td>55.50</td><td>56.25</td><td>91.00</td>" in page
    assert "Intra rounds" not in build_html([], METRICS, [], [])
