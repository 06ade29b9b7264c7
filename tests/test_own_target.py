"""Your own target images: a folder tree of images (any depth, mixed formats), an
optional labelled target-val matched by place and name, and a class table, indexed,
validated and run through the whole DAG with `dvc repro`, with and without labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from intrada.artifacts import read_pseudo_label
from intrada.config import NO_FILE, ParamsError, check_all, read_params
from intrada.errors import IntradaError
from intrada.layouts import index_folder, index_folder_pairs
from tests.conftest import tiny_params, write_params
from tests.pipeline import dvc_stages, run_pipeline, run_stage
from tests.real_layouts import OWN_TABLE, save, write_folder_target, write_gta5

TRAIN = [  # nested folders, png and jpg in any case
    "cam1/0001.png",
    "cam1/0002.jpg",
    "cam1/dusk/0003.jpeg",
    "cam2/0004.png",
    "cam2/0005.JPG",
    "0006.png",
]
VAL = ["a/v1.jpg", "v2.png"]


def write_trees(root: Path) -> Path:
    """GTA5 source, the user's target (train of two image sizes, a labelled val whose
    labels differ in size), and the class table."""
    write_gta5(root / "GTA5", count=6, size=(96, 48))
    write_folder_target(root / "mine/train", TRAIN[:3], size=(80, 40))
    write_folder_target(root / "mine/train", TRAIN[3:], size=(64, 32))
    write_folder_target(root / "mine/val", VAL[:1], size=(64, 32), labels=True)
    write_folder_target(root / "mine/val", VAL[1:], size=(96, 48), labels=True)
    (root / "classes.yaml").write_text(OWN_TABLE)
    return root


def own_params(trees: Path, val: bool = True) -> dict:
    params = tiny_params()
    params["data"].update(
        name="gta5",
        source_root=str(trees / "GTA5"),
        target_layout="folder",
        target_root=None,
        target_train=str(trees / "mine/train/images"),
        target_train_labels=NO_FILE,
        target_val_images=str(trees / "mine/val/images") if val else NO_FILE,
        target_val_labels=str(trees / "mine/val/labels") if val else NO_FILE,
        classes="table",
        class_table=str(trees / "classes.yaml"),
        verify="header",
    )
    params["generate"] = {}
    params["inference"]["rare_classes"] = ["vehicle"]
    return params


@pytest.fixture
def trees(tmp_path) -> Path:
    return write_trees(tmp_path / "trees")


# --- the folder layout ------------------------------------------------------------------


def test_a_folder_is_indexed_at_any_depth_by_path(tmp_path):
    names = ["b/2.png", "a/x/1.JPG", "a/3.jpeg", "c.bmp", "d.tif", "e.tiff", "f.webp"]
    images, _ = write_folder_target(tmp_path, names)
    (images / "a" / "notes.txt").write_text("not an image")
    save(images / ".hidden" / "9.png", np.zeros((4, 4), np.uint8))
    save(images / "a" / ".10.png", np.zeros((4, 4), np.uint8))
    table = index_folder(images)
    assert table["image_id"].tolist() == ["a/3", "a/x/1", "b/2", "c", "d", "e", "f"]
    assert table["image_path"][1] == (images / "a/x/1.JPG").as_posix()


def test_labels_are_matched_by_place_and_name(tmp_path):
    images, labels = write_folder_target(tmp_path, VAL, labels=True)
    table = index_folder_pairs(images, labels, "table:target")
    assert table["label_path"].tolist() == [
        (labels / "a/v1.png").as_posix(),
        (labels / "v2.png").as_posix(),
    ]
    assert set(table["label_encoding"]) == {"table:target"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_label", r"images/a/v1.jpg: image without its label; expected .*labels/a/v1.png"),
        ("stray_label", r"labels/b/v3.png: label without its image; expected an image named "),
        ("same_name", r"images/v2.png: v2.jpg has the same name in the same folder"),
        ("empty", r"images: no images found; expected the folder layout"),
    ],
)
def test_unmatched_files_fail_in_one_line(tmp_path, damage, message):
    images, labels = write_folder_target(tmp_path, VAL, labels=True)
    if damage == "no_label":
        (labels / "a/v1.png").unlink()
    elif damage == "stray_label":
        save(labels / "b/v3.png", np.zeros((4, 4), np.uint8))
    elif damage == "same_name":
        write_folder_target(tmp_path, ["v2.jpg"])
    else:
        for path in sorted(images.rglob("*.*")):
            path.unlink()
    with pytest.raises(IntradaError, match=message) as info:
        index_folder_pairs(images, labels, "table:target")
    assert "\n" not in str(info.value)


# --- params -------------------------------------------------------------------------------


def check(tmp_path: Path, params: dict) -> None:
    check_all(read_params(write_params(tmp_path, params)))


def test_own_target_params_are_valid_with_and_without_val(tmp_path, trees):
    check(tmp_path, own_params(trees))
    check(tmp_path, own_params(trees, val=False))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"target_root": "elsewhere"},
            r"data\.target_root = 'elsewhere' .* null with target_layout",
        ),
        ({"target_val_labels": NO_FILE}, r"data\.target_val_images = .* data/params.ok like"),
        (
            {"target_train": "nowhere"},
            r"data\.target_train = 'nowhere' .* existing folder of images",
        ),
        ({"classes": "builtin"}, r"data\.class_table = .* data/params.ok when data\.classes is"),
        ({"class_table": NO_FILE}, r"data\.class_table = 'data/params.ok' .* an existing class"),
        ({"target_layout": "cityscapes"}, r"data\.target_root = None .*the Cityscapes root"),
        ({"name": "synthia"}, r"classes.yaml: the class table lists no synthia values"),
    ],
)
def test_bad_own_target_params_fail_in_one_line(tmp_path, trees, change, message):
    params = own_params(trees)
    params["data"].update(change)
    with pytest.raises(IntradaError, match=message) as info:
        check(tmp_path, params)
    assert "\n" not in str(info.value)


def test_folders_may_not_hold_one_another(tmp_path, trees):
    # Val images under the train folder would be adapted on as target-train.
    params = own_params(trees)
    params["data"]["target_train"] = str(trees / "mine")
    with pytest.raises(ParamsError, match=r"data\.target_\w+ = .* a folder outside data\.target_"):
        check(tmp_path, params)


def test_what_needs_a_labelled_val_or_the_tables_classes_is_refused(tmp_path, trees):
    params = own_params(trees, val=False)
    params["inter"].update(select="best_val")
    with pytest.raises(ParamsError, match=r"inter\.select = 'best_val' .* no labelled target-val"):
        check(tmp_path, params)
    params = own_params(trees)
    params["inference"]["rare_classes"] = ["pole"]
    with pytest.raises(ParamsError, match=r"class names of the class table .*classes.yaml: road"):
        check(tmp_path, params)
    (trees / "classes.yaml").write_text(
        OWN_TABLE.replace("    target: [1]\n", "")
        .replace("    target: [2]\n", "")
        .replace("    target: [3]\n", "")
        .replace("  target: [0, 255]\n", "")
    )
    with pytest.raises(IntradaError, match=r"the class table lists no target values"):
        check(tmp_path, params)
    check(tmp_path, own_params(trees, val=False))  # without target labels it needs none


# --- index_data: the validation pass --------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated_jpg", r"images/cam1/0002.jpg: unreadable image"),
        ("unknown_value", r"labels/v2.png: label value 7 is not in the class table"),
        ("source_value", r"GTA5/labels/00002.png: label value 34 is not in the class table"),
        ("no_label", r"images/v2.png: image without its label"),
        ("bad_table", r"classes.yaml: classes\[1\] \(road\): the name is used twice"),
    ],
)
def test_index_data_stops_on_bad_inputs_with_one_line(tmp_path, trees, damage, message):
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, own_params(trees))
    if damage == "truncated_jpg":
        path = trees / "mine/train/images/cam1/0002.jpg"
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "unknown_value":
        label = np.array(Image.open(trees / "mine/val/labels/v2.png"))
        label[3, 4] = 7
        save(trees / "mine/val/labels/v2.png", label)
    elif damage == "source_value":
        save(trees / "GTA5/labels/00002.png", np.full((48, 96), 34, np.uint8))
    elif damage == "no_label":
        (trees / "mine/val/labels/v2.png").unlink()
    else:
        (trees / "classes.yaml").write_text(OWN_TABLE.replace("name: building", "name: road"))
    with pytest.raises(IntradaError, match=message) as info:
        run_stage("index_data", project)
    assert "\n" not in str(info.value)
    assert not (project / "data/index").exists()


# --- the whole DAG through dvc repro --------------------------------------------------------


@pytest.fixture(scope="module")
def own_repo(tmp_path_factory):
    """A git repository whose pipeline ran with dvc repro on the user's labelled target."""
    from tests.test_dvc_pipeline import project_repo, ran_stages, run

    trees = write_trees(tmp_path_factory.mktemp("trees"))
    params = own_params(trees)
    root = project_repo(tmp_path_factory.mktemp("repo"), params)
    first = run(["dvc", "repro"], root)
    assert ran_stages(first) == list(dvc_stages(params))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "reproduced"], root)
    return root, trees


@pytest.mark.slow
def test_dvc_repro_runs_a_folder_of_images_with_a_class_table(own_repo):
    root, trees = own_repo
    target = pd.read_parquet(root / "data/index/target_train.parquet")
    assert target["image_id"].tolist() == sorted(n.rsplit(".", 1)[0] for n in TRAIN)
    pseudo = pd.read_parquet(root / "data/pseudo_labels/index.parquet")
    label = read_pseudo_label(pseudo, pseudo["image_id"][0], root)
    assert label.shape == (32, 64) and set(np.unique(label)) <= {0, 1, 2, 255}
    report = json.loads((root / "metrics/eval.json").read_text())
    assert list(report["intra"]["IoU"]) == ["road", "building", "vehicle"]
    assert "mIoU_stuff" in report["intra"] and "not_available" in report
    assert list(report["not_available"]) == ["diagnostics"]  # target-train has no labels
    assert set(report["diagnostics"].values()) == {None}
    # Every labelled val pixel counts, at each label's own size (64x32 and 96x48).
    cm = pd.read_csv(root / "metrics/confusion/intra.csv", index_col=0)
    assert list(cm.index) == ["road", "building", "vehicle"]
    labels = [np.array(Image.open(p)) for p in sorted((trees / "mine/val/labels").rglob("*.png"))]
    assert cm.to_numpy().sum() == sum(int(np.isin(a, [1, 2, 3]).sum()) for a in labels)
    cells = pd.read_csv(root / "plots/confusion/intra.csv")
    assert len(cells) == 9
    gallery = root / "plots/gallery"
    assert len(list(gallery.glob("*.png"))) == 2 * tiny_params()["figures"]["gallery_k"] + 1


@pytest.mark.slow
def test_dvc_repro_without_labels_runs_to_the_figures_and_says_what_is_missing(own_repo):
    from tests.test_dvc_pipeline import ran_stages, run

    root, trees = own_repo
    params = own_params(trees, val=False)
    write_params(root, params)
    result = run(["dvc", "repro"], root)
    ran = ran_stages(result)
    assert "index_data" in ran and "evaluate" in ran and "figures" in ran
    assert "no labelled target-val: no val/mIoU during training" in result.stderr
    assert "not available: no labelled target-val" in result.stderr
    report = json.loads((root / "metrics/eval.json").read_text())
    assert [report[m]["mIoU"] for m in ("source_only", "inter", "intra")] == [None] * 3
    assert list(report["not_available"]) == ["mIoU", "diagnostics"]
    assert list((root / "metrics/confusion").iterdir()) == []
    assert len(list((root / "plots/gallery").glob("*.png"))) > 1
    assert (root / "models/intra/model.pt").is_file()
    assert run(["dvc", "status"], root).stdout.strip() == "Data and pipelines are up to date."
    out = run([sys.executable, "-m", "intrada.report", "--out", "report.html"], root)
    page = (root / "report.html").read_text()
    assert "Not available: no labelled target-val" in page and "wrote report.html" in out.stdout


# --- other combinations, in-process ----------------------------------------------------------


def test_unlabelled_images_with_the_builtin_classes_run_to_the_figures(tmp_path, trees):
    """The released repository's advice for your own images: keep the 19 classes, bring
    unlabelled images. Every stage runs; the metrics file names what it cannot give."""
    params = own_params(trees, val=False)
    params["data"].update(classes="builtin", class_table=NO_FILE)
    params["inference"]["rare_classes"] = ["pole", "person"]
    run_pipeline(tmp_path / "project", params)
    report = json.loads((tmp_path / "project/metrics/eval.json").read_text())
    assert report["intra"] == {"mIoU": None}
    assert set(report["not_available"]) == {"mIoU", "diagnostics"}
    pseudo = pd.read_parquet(tmp_path / "project/data/pseudo_labels/index.parquet")
    label = read_pseudo_label(pseudo, pseudo["image_id"][0], tmp_path / "project")
    assert set(np.unique(label)) <= set(range(19)) | {255}  # Cityscapes train ids


def test_labelled_target_train_gives_the_ranking_diagnostics(tmp_path, trees):
    write_folder_target(trees / "mine/train", TRAIN[:3], size=(80, 40), labels=True)
    write_folder_target(trees / "mine/train", TRAIN[3:], size=(64, 32), labels=True)
    params = own_params(trees)
    params["data"]["target_train_labels"] = str(trees / "mine/train/labels")
    run_pipeline(tmp_path / "project", params)
    report = json.loads((tmp_path / "project/metrics/eval.json").read_text())
    assert "not_available" not in report
    assert report["diagnostics"]["pseudo_label_coverage"] == 100.0


def test_a_class_table_over_the_cityscapes_layout(tmp_path):
    """Cityscapes' own label ids through a table: here its 19 classes merged into three."""
    from tests.real_layouts import cityscapes_target, write_cityscapes

    write_gta5(tmp_path / "GTA5", count=6, size=(96, 48))
    write_cityscapes(tmp_path / "cityscapes", {"train": 6, "val": 2}, size=(64, 32))
    lines = OWN_TABLE.splitlines(keepends=True)
    table = "".join(
        line.replace("target: [1]", "cityscapes: [7]")
        .replace("target: [2]", "cityscapes: [11]")
        .replace("target: [3]", "cityscapes: [26, 33]")
        .replace("target: [0, 255]", 'cityscapes: ["0-6", "8-10", "12-25", "27-32"]')
        for line in lines
    )
    (tmp_path / "classes.yaml").write_text(table)
    params = own_params(tmp_path / "unused")
    params["data"].update(
        **cityscapes_target(tmp_path / "cityscapes"),
        source_root=str(tmp_path / "GTA5"),
        class_table=str(tmp_path / "classes.yaml"),
    )
    run_pipeline(tmp_path / "project", params)
    val = pd.read_parquet(tmp_path / "project/data/index/target_val.parquet")
    assert set(val["label_encoding"]) == {"table:cityscapes"}
    report = json.loads((tmp_path / "project/metrics/eval.json").read_text())
    assert list(report["intra"]["IoU"]) == ["road", "building", "vehicle"]
    assert report["diagnostics"]["pseudo_label_coverage"] == 100.0
