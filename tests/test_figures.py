"""Pictures of the ranking and the errors: the tables behind them on hand-made inputs, and
the heat map as DVC and the report draw it, at 19 classes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from intrada.classes import dataset_classes
from intrada.figures import confusion_long, gallery_picks, ranked, score_histogram, tile_size
from intrada.report import render_svg
from tests.conftest import REPO


def split(scores: list[float], name: str, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"{name}{i}" for i in range(len(scores))],
            "score": scores,
            "rank": range(start, start + len(scores)),
            "split": name,
        }
    )


def test_score_histogram_counts_each_image_once_and_puts_the_cut_between_the_splits():
    easy, hard = split([0.1, 0.2, 0.35], "easy"), split([0.55, 0.9], "hard", 3)
    table = score_histogram(easy, hard, bins=4)  # edges 0.1 0.3 0.5 0.7 0.9
    rows = {(r.split, r.score_from): r.images for r in table.itertuples()}
    assert rows == {("easy", 0.1): 2, ("easy", 0.3): 1, ("hard", 0.5): 1, ("hard", 0.7): 1}
    assert table["images"].sum() == 5
    assert set(table["cut"]) == {0.45}  # midway between the last easy and the first hard


def test_score_histogram_without_a_hard_split_cuts_above_every_score():
    table = score_histogram(split([0.2, 0.4], "easy"), split([], "hard"), bins=3)
    assert set(table["split"]) == {"easy"} and table["images"].sum() == 2
    assert set(table["cut"]) == {0.4}


def test_confusion_long_normalises_each_true_class_and_keeps_the_class_order():
    names = ["sky", "car", "road"]  # not alphabetical: the axes follow the class set
    cm = pd.DataFrame([[3, 1, 0], [0, 0, 0], [1, 1, 2]], index=names, columns=names)
    table = confusion_long(cm)
    assert len(table) == 9
    assert table["truth"].tolist()[:3] == ["sky"] * 3
    assert table["prediction"].tolist()[:3] == names
    share = table.set_index(["truth", "prediction"])["percent"]
    assert (share["sky", "sky"], share["sky", "car"], share["road", "road"]) == (75.0, 25.0, 50.0)
    assert share["car"].isna().all()  # no car pixels in the truth: no share, not 0
    assert table.groupby("truth")["percent"].sum().drop("car").tolist() == [100.0, 100.0]
    assert table["pixels"].sum() == 8


def test_gallery_picks_the_k_lowest_and_the_k_highest_scores():
    table = ranked(split([0.1, 0.2, 0.3], "easy"), split([0.5, 0.9], "hard", 3))
    picks = gallery_picks(table, 2)
    assert picks["easy"]["image_id"].tolist() == ["easy0", "easy1"]  # easiest first
    assert picks["hard"]["image_id"].tolist() == ["hard1", "hard0"]  # hardest first
    assert len(gallery_picks(table, 9)["easy"]) == 5  # never more than the images


def test_thumbnails_keep_the_aspect_ratio():
    assert tile_size((2048, 1024), 256) == (256, 128)
    assert tile_size((128, 64), 256) == (256, 128)
    assert tile_size((1280, 720), 256) == (256, 144)


HEATMAP = "Confusion on target-val, inter AdvEnt: % of each true class"


@pytest.fixture(scope="module")
def heatmap_svg(tmp_path_factory) -> tuple[str, list[str]]:
    """The inter heat map of a 19-class (GTA5 -> Cityscapes) confusion matrix, filled by
    `dvc plots show` from the project's dvc.yaml and template, rendered as the report
    renders it."""
    root = tmp_path_factory.mktemp("heatmap")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    subprocess.run([_dvc(), "init", "--no-scm", "-q"], cwd=root, check=True)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")
    names = list(dataset_classes("gta5").names)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (19, 19)) + np.diag(rng.integers(500, 1000, 19))
    counts[names.index("train")] = 0  # a class absent from the ground truth
    cm = pd.DataFrame(counts, index=names, columns=names)
    (root / "plots/confusion").mkdir(parents=True)
    confusion_long(cm).to_csv(root / "plots/confusion/inter.csv", index=False)
    shown = subprocess.run(
        [_dvc(), "plots", "show", "--json", HEATMAP], cwd=root, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert not result.get("errors"), result["errors"]
    (entry,) = result["data"][HEATMAP]
    return render_svg(entry["content"]), names


def _dvc() -> str:
    return str(Path(sys.executable).parent / "dvc")


def test_heatmap_names_all_19_classes_on_both_axes_in_class_order(heatmap_svg):
    svg, names = heatmap_svg
    texts = [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    for name in names:
        assert texts.count(name) == 2, name  # once per axis, never cut short
    assert not [t for t in texts if t.endswith("…")]
    y_axis = [t for t in texts if t in names][len(names) :]
    x_axis = [t for t in texts if t in names][: len(names)]
    assert sorted(x_axis, key=names.index) == x_axis and sorted(y_axis, key=names.index) == y_axis
    assert HEATMAP in texts and "true class" in texts and "predicted class" in texts


def test_heatmap_writes_each_share_of_1_percent_or_more_and_sizes_cells_to_read(heatmap_svg):
    svg, _ = heatmap_svg
    width = float(re.search(r'<svg[^>]*width="([\d.]+)"', svg).group(1))
    assert 19 * 20 < width < 1000  # cells about 26 px wide: legible, fits a screen
    numbers = [t for t in re.findall(r"<text[^>]*>(\d+)</text>", svg)]
    # 18 classes present; each diagonal share is at least about 40 % and written in.
    assert sum(int(n) >= 40 for n in numbers) >= 18


def test_val_panels_at_cityscapes_size_are_thumbnails_and_small_images_stay_2x(tmp_path):
    from PIL import Image

    from intrada.data import SegmentationSet
    from intrada.evaluation import val_panel
    from intrada.models import build_model

    classes = dataset_classes("synthetic")
    rows = []
    for i, (width, height) in enumerate([(2048, 1024), (64, 32)]):
        image, label = tmp_path / f"image{i}.png", tmp_path / f"label{i}.png"
        Image.new("RGB", (width, height), (90, 120, 60)).save(image)
        Image.new("L", (width, height), 0).save(label)
        rows.append((f"img{i}", str(image), str(label), "train_id"))
    table = pd.DataFrame(rows, columns=["image_id", "image_path", "label_path", "label_encoding"])
    models = {"inter": build_model("small", len(classes), width=4).eval()}
    # Cityscapes: read at 1024x512, each tile shrunk to 256x128 (image, truth, model,
    # entropy), under a 12 px header.
    big = SegmentationSet(table.iloc[:1], classes, tmp_path, labelled=True, size=(1024, 512))
    assert val_panel(models, big, classes, 0).shape == (12 + 128, 4 * 256, 3)
    small = SegmentationSet(table.iloc[1:], classes, tmp_path, labelled=True, size=(64, 32))
    assert val_panel(models, small, classes, 0).shape == (12 + 64, 4 * 128, 3)
