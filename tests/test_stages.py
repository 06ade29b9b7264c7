"""Every stage on tiny inputs, run in-process with the arguments dvc.yaml gives it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from intrada.artifacts import read_entropy_map, read_prediction, read_pseudo_label
from intrada.checkpoint import load_model
from intrada.classes import dataset_classes
from intrada.data import SegmentationSet
from intrada.inference import predict_probs
from intrada.io import read_label
from tests.conftest import REPO, tiny_params, write_params
from tests.pipeline import dvc_stages, run_pipeline, run_stage, tree_digest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A directory where the whole pipeline ran once on the tiny profile."""
    directory = tmp_path_factory.mktemp("project")
    accessed: dict[str, set] = {}
    run_pipeline(directory, tiny_params(), accessed)
    return directory, accessed


def test_generate_and_index_data_write_the_four_tables(project):
    root, _ = project
    p = tiny_params()["generate"]["synthetic"]
    sizes = {
        "source": p["num_source"],
        "target_train": p["num_target_train"],
        "target_train_gt": p["num_target_train"],
        "target_val": p["num_target_val"],
    }
    for name, size in sizes.items():
        assert len(pd.read_parquet(root / "data/index" / f"{name}.parquet")) == size
    # Training never sees target-train's labels.
    assert "label_path" not in pd.read_parquet(root / "data/index/target_train.parquet")
    first = pd.read_parquet(root / "data/index/target_train.parquet")["image_path"][0]
    assert (
        first == "data/synthetic/target/leftImg8bit/train/synth/synth_000000_000000_leftImg8bit.png"
    )
    image = Image.open(root / first)
    assert image.size == (p["width"], p["height"]) and image.mode == "RGB"


def test_training_stages_write_models_with_provenance_and_curves(project):
    root, _ = project
    classes = dataset_classes("synthetic")
    metas = {}
    for stage in ("source_only", "inter", "intra"):
        _, meta = load_model(root / "models" / stage / "model.pt", classes)
        metas[stage] = meta
        assert meta["stage"] == stage and meta["arch"] == "small"
        assert meta["class_names"] == list(classes.names)
        assert meta["params"][stage] == tiny_params()[stage]
        assert meta["params"]["seed"] == 0 and "torch" in meta["versions"]
        # as dvc.yaml declares: the data keys training reads, not the roots
        assert meta["params"]["data"] == {
            "name": "synthetic",
            "source_size": [64, 32],
            "target_size": [64, 32],
        }
        curves = root / "dvclive" / stage / "plots/metrics/train/loss_seg_src_main.tsv"
        assert curves.read_text().splitlines()[0] == "step\tloss_seg_src_main"
        assert (root / "dvclive" / stage / "metrics.json").is_file()
        # Validated on target-val at the last iteration (3 < eval_every): the curve is
        # logged on the iteration axis and recorded in the model file.
        val = (root / "dvclive" / stage / "plots/metrics/val/mIoU.tsv").read_text().splitlines()
        assert val[0] == "step\tmIoU" and val[1].startswith("3\t")
        validation = meta["validation"]
        assert [i for i, _ in validation["curve"]] == [3]
        assert validation["curve"][0][1] == float(val[1].split("\t")[1])
        assert validation["select"] == tiny_params()[stage]["select"]
        assert validation["selected_iteration"] == 3  # the only validation point
        assert meta["arch_config"] == {"width": 4, "align_corners": False}
    assert metas["source_only"]["init_from"] is None
    assert metas["inter"]["init_from"]["path"] == "models/source_only/model.pt"
    assert metas["intra"]["init_from"]["path"] == "models/inter/model.pt"
    assert metas["intra"]["params"]["lambda"] == 0.67  # which split produced this model
    assert "loss_adv_trg_main.tsv" in {
        p.name for p in (root / "dvclive/inter/plots/metrics/train").iterdir()
    }


def test_score_entropy_writes_a_map_and_prediction_per_image_in_shards(project):
    root, _ = project
    scores = pd.read_parquet(root / "data/entropy/scores.parquet")
    assert list(scores.columns[:4]) == ["image_id", "image_path", "entropy", "score"]
    assert len(scores) == tiny_params()["generate"]["synthetic"]["num_target_train"]
    # 10 images in shards of 4: files 0, 0, 0, 0, 1, ..., 2, 2; one per image, by name.
    shards = [f"data/entropy/maps/shard-0000{i // 4}.zip" for i in range(10)]
    assert scores["map_path"].tolist() == shards
    assert scores["map_member"].tolist() == [f"{i}.png" for i in scores["image_id"]]
    assert sorted(p.name for p in (root / "data/entropy/maps").iterdir()) == sorted(
        set(Path(s).name for s in shards)
    )
    with zipfile.ZipFile(root / shards[-1]) as last:
        assert last.namelist() == scores["map_member"].tolist()[8:]
    allowed = set(dataset_classes("synthetic").train_ids)
    for row in scores.itertuples():
        entropy = read_entropy_map(scores, row.image_id, root)
        assert entropy.shape == (32, 64) and entropy.dtype == np.float32
        assert entropy.min() >= 0.0 and entropy.max() <= 1.0
        # The score is the mean of the full-precision map; the stored map is within 1/510.
        assert row.entropy == pytest.approx(float(entropy.astype(np.float64).mean()), abs=2e-3)
        prediction = read_prediction(scores, row.image_id, root)
        assert prediction.shape == (32, 64) and set(np.unique(prediction).tolist()) <= allowed


def test_entropy_normalisation_scales_scores_by_the_rare_classes_shown(project):
    root, _ = project
    params = tiny_params()
    params["inference"].update(normalize_entropy=True, rare_classes=["sky", "car", "road"])
    write_params(root, params)
    before = (root / "data/entropy/scores.parquet").read_bytes()
    try:
        run_stage("score_entropy", root)
        scores = pd.read_parquet(root / "data/entropy/scores.parquet")
    finally:
        write_params(root, tiny_params())
        run_stage("score_entropy", root)
    assert (root / "data/entropy/scores.parquet").read_bytes() == before
    classes = dataset_classes("synthetic")
    rare_ids = {classes.train_ids[classes.names.index(n)] for n in ("sky", "car", "road")}
    for row in scores.itertuples():
        shown = set(np.unique(read_prediction(scores, row.image_id, root)).tolist())
        assert row.rare_present == len(shown & rare_ids)
        assert row.score == pytest.approx(row.entropy * ((3 - row.rare_present) / 3 + 0.5))
    assert scores["rare_present"].max() > 0


def test_rank_splits_writes_disjoint_easy_and_hard_tables(project):
    root, _ = project
    easy = pd.read_parquet(root / "data/splits/easy.parquet")
    hard = pd.read_parquet(root / "data/splits/hard.parquet")
    for column in ("image_id", "image_path", "entropy", "score", "rank", "split"):
        assert column in easy.columns
    assert len(easy) == int(10 * 0.67) and len(hard) == 10 - len(easy)
    assert set(easy["image_id"]).isdisjoint(hard["image_id"])
    assert sorted(easy["rank"].tolist() + hard["rank"].tolist()) == list(range(10))
    assert easy["score"].max() <= hard["score"].min()


def test_pseudo_labels_are_the_inter_predictions_of_the_easy_images(project):
    root, _ = project
    index = pd.read_parquet(root / "data/pseudo_labels/index.parquet")
    easy = pd.read_parquet(root / "data/splits/easy.parquet")
    assert index["image_id"].tolist() == easy["image_id"].tolist()
    assert (index["labelled_fraction"] == 1.0).all()  # threshold 0 keeps every pixel
    # 6 easy images in shards of 3.
    assert index["label_path"].tolist() == [
        f"data/pseudo_labels/labels/shard-0000{i // 3}.zip" for i in range(6)
    ]
    for image_id in index["image_id"]:
        label = read_pseudo_label(index, image_id, root)
        assert (label == read_prediction(easy, image_id, root)).all()


def test_confidence_threshold_turns_unsure_pixels_into_ignore(project, tmp_path):
    root, _ = project
    classes = dataset_classes("synthetic")
    model, _ = load_model(root / "models/inter/model.pt", classes)
    easy_set = SegmentationSet(
        pd.read_parquet(root / "data/splits/easy.parquet"), classes, root, labelled=False
    )
    images = torch.stack([easy_set[(i, False)]["image"] for i in range(len(easy_set))])
    confidence = predict_probs(model, images, tuple(images.shape[-2:])).max(dim=1).values
    params = tiny_params()
    # The median confidence: some pixels of the tiny model fall below it, some not.
    params["pseudo_labels"]["confidence_threshold"] = float(confidence.median())
    write_params(root, params)
    before = (root / "data/pseudo_labels/index.parquet").read_bytes()
    try:
        run_stage("pseudo_labels", root)
        index = pd.read_parquet(root / "data/pseudo_labels/index.parquet")
        easy = pd.read_parquet(root / "data/splits/easy.parquet")
        ignored = kept = 0
        for image_id in index["image_id"]:
            label = read_pseudo_label(index, image_id, root)
            prediction = read_prediction(easy, image_id, root)
            # Kept pixels are the prediction; the others are ignore.
            assert (label[label != 255] == prediction[label != 255]).all()
            ignored, kept = ignored + (label == 255).sum(), kept + (label != 255).sum()
        assert ignored > 0 and kept > 0
        assert index["labelled_fraction"].mean() == pytest.approx(kept / (kept + ignored))
    finally:
        write_params(root, tiny_params())
        run_stage("pseudo_labels", root)
    assert (root / "data/pseudo_labels/index.parquet").read_bytes() == before


def test_evaluate_writes_metrics_confusion_matrices_and_panels(project):
    root, _ = project
    report = json.loads((root / "metrics/eval.json").read_text())
    names = list(dataset_classes("synthetic").names)
    assert list(report) == ["source_only", "inter", "intra", "diagnostics"]
    diagnostics = report.pop("diagnostics")
    assert set(diagnostics) == {
        "inter_easy_mIoU",
        "inter_hard_mIoU",
        "score_error_spearman",
        "pseudo_label_accuracy",
        "pseudo_label_coverage",
    }
    assert -1.0 <= diagnostics["score_error_spearman"] <= 1.0
    assert diagnostics["pseudo_label_coverage"] == 100.0
    val = pd.read_parquet(root / "data/index/target_val.parquet")
    labelled = sum(
        int((read_label(root / p, e) != 255).sum())
        for p, e in zip(val["label_path"], val["label_encoding"], strict=True)
    )
    for model, result in report.items():
        assert 0.0 <= result["mIoU"] <= 100.0 and list(result["IoU"]) == names
        # The model file holds the last iteration; the best on val (here the only
        # validation, the last iteration) is named as selected on the evaluation set.
        _, meta = load_model(root / "models" / model / "model.pt")
        assert result["mIoU_last"] == result["mIoU"]
        assert result["mIoU_best_val_selected_on_val"] == result["mIoU"]
        assert result["best_val_iteration"] == result["selected_iteration"] == 3
        # Validation during training computes what the evaluate stage computes.
        assert meta["validation"]["last_mIoU"] == result["mIoU"]
        cm = pd.read_csv(root / f"metrics/confusion/{model}.csv", index_col=0)
        assert list(cm.index) == names and list(cm.columns) == names
        assert int(cm.to_numpy().sum()) == labelled  # every labelled pixel, at label size
        iou = pd.read_csv(root / f"plots/iou/{model}.csv")
        assert iou["class"].tolist() == names
    assert len(list((root / "plots/panels").glob("*.png"))) == 2


def test_figures_draw_the_ranking_and_the_confusion_tables(project):
    root, _ = project
    k = tiny_params()["figures"]["gallery_k"]
    easy = pd.read_parquet(root / "data/splits/easy.parquet")
    hard = pd.read_parquet(root / "data/splits/hard.parquet")
    gallery = root / "plots/gallery"
    assert sorted(p.name for p in gallery.iterdir()) == sorted(
        [f"{kind}_{i:02d}.png" for kind in ("easy", "hard") for i in range(k)] + ["colour_key.png"]
    )
    # 64x32 images as 256x128 thumbnails: 4 tiles for an easy image (with its
    # pseudo-label), 3 for a hard one, 4 px apart, under a 36 px caption and titles.
    assert Image.open(gallery / "easy_00.png").size == (4 * 256 + 3 * 4, 36 + 128)
    assert Image.open(gallery / "hard_00.png").size == (3 * 256 + 2 * 4, 36 + 128)
    # The last tile of the easiest image is its pseudo-label, read from the shard and
    # coloured with the Cityscapes palette (each label pixel a 4x4 block).
    first = easy.sort_values("rank").iloc[0]
    index = pd.read_parquet(root / "data/pseudo_labels/index.parquet").set_index("image_id")
    row = index.loc[first["image_id"]]
    with zipfile.ZipFile(root / row["label_path"]) as shard:
        label = np.array(Image.open(shard.open(row["label_member"])))
    expected = dataset_classes("synthetic").palette()[label].repeat(4, 0).repeat(4, 1)
    tile = np.asarray(Image.open(gallery / "easy_00.png"))[36:, 3 * (256 + 4) :]
    assert np.array_equal(tile, expected)

    histogram = pd.read_csv(root / "plots/ranking/score_histogram.csv")
    assert histogram.groupby("split")["images"].sum().to_dict() == {
        "easy": len(easy),
        "hard": len(hard),
    }
    assert easy["score"].max() <= histogram["cut"].iloc[0] <= hard["score"].min()
    names = list(dataset_classes("synthetic").names)
    for model in ("source_only", "inter", "intra"):
        cm = pd.read_csv(root / f"metrics/confusion/{model}.csv", index_col=0)
        cells = pd.read_csv(root / f"plots/confusion/{model}.csv")
        assert len(cells) == len(names) ** 2 and cells["pixels"].sum() == cm.to_numpy().sum()
        rows = cells.dropna(subset=["percent"]).groupby("truth")["percent"].sum()
        assert np.allclose(rows, 100.0, atol=0.1)


def test_a_new_gallery_size_changes_only_the_gallery(project, tmp_path):
    root = tmp_path / "gallery"
    shutil.copytree(project[0], root, symlinks=True)
    params = tiny_params()
    params["figures"]["gallery_k"] = 1
    write_params(root, params)
    before = tree_digest(root)
    run_stage("figures", root)
    after = tree_digest(root)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed == {"plots/gallery/easy_01.png", "plots/gallery/hard_01.png"}


def test_best_val_keeps_the_best_iteration_and_reports_both_numbers(project, tmp_path):
    root = tmp_path / "best_val"
    shutil.copytree(project[0], root, symlinks=True)
    params = tiny_params()
    params["intra"].update(select="best_val", eval_every=1)
    write_params(root, params)
    run_stage("train_intra", root)
    run_stage("evaluate", root)
    _, meta = load_model(root / "models/intra/model.pt")
    validation = meta["validation"]
    curve = dict(validation["curve"])
    assert list(curve) == [1, 2, 3]
    best = max(curve, key=lambda i: (curve[i], -i))  # the first of the best
    assert validation["best_iteration"] == validation["selected_iteration"] == best
    result = json.loads((root / "metrics/eval.json").read_text())["intra"]
    assert result["selected_iteration"] == result["best_val_iteration"] == best
    # The file holds the best iteration: what evaluate measures is the curve's best.
    assert result["mIoU"] == result["mIoU_best_val_selected_on_val"] == curve[best]
    assert result["mIoU_last"] == curve[3]


def test_stages_read_only_the_params_they_declare(project):
    _, accessed = project
    for name, stage in dvc_stages().items():
        declared = {str(p).split(".")[0] for p in stage.get("params", []) if isinstance(p, str)}
        if any(isinstance(p, dict) for p in stage.get("params", [])):
            continue  # check_params tracks the whole file
        assert accessed.get(name, set()) <= declared, name


def test_same_params_and_seed_give_identical_artifacts(project, tmp_path):
    root, _ = project
    run_pipeline(tmp_path / "again", tiny_params())
    assert tree_digest(tmp_path / "again") == tree_digest(root)


def test_bad_lambda_fails_in_one_line_and_leaves_the_splits_untouched(project, tmp_path):
    root, _ = project
    params = tiny_params()
    params["lambda"] = 1.5
    write_params(root, params)
    before = (root / "data/splits/easy.parquet").read_bytes()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "stages.rank_splits",
                "--scores",
                "data/entropy/scores.parquet",
                "--easy",
                "data/splits/easy.parquet",
                "--hard",
                "data/splits/hard.parquet",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(REPO)},
        )
    finally:
        write_params(root, tiny_params())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: lambda = 1.5 is invalid: expected a number in (0, 1]: "
        "the fraction of images ranked easy (1 = self-training on every image)"
    ]
    assert (root / "data/splits/easy.parquet").read_bytes() == before


def test_a_failing_stage_leaves_no_half_written_output(project, monkeypatch):
    root, _ = project
    folder = root / "data/pseudo_labels"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    import intrada.pseudo_labels as module

    original, calls = module.LabelShards.add, []

    def fail_midway(self, *args):
        calls.append(args)
        if len(calls) > 4:  # the first shard of 3 is written and closed, the next begun
            raise RuntimeError("disk full")
        original(self, *args)

    monkeypatch.setattr(module.LabelShards, "add", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        run_stage("pseudo_labels", root)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not [p for p in (root / "data").iterdir() if p.name.endswith(".tmp")]


def test_lambda_one_self_trains_on_every_image_without_a_hard_split(tmp_path):
    params = tiny_params()
    params["lambda"] = 1.0
    run_pipeline(tmp_path, params)
    assert len(pd.read_parquet(tmp_path / "data/splits/easy.parquet")) == 10
    assert len(pd.read_parquet(tmp_path / "data/splits/hard.parquet")) == 0
    assert len(pd.read_parquet(tmp_path / "data/pseudo_labels/index.parquet")) == 10
    curves = {p.name for p in (tmp_path / "dvclive/intra/plots/metrics/train").iterdir()}
    assert "loss_seg_src_main.tsv" in curves
    assert not [c for c in curves if "adv" in c or "disc" in c or c.startswith("loss_d")]
    report = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert report["diagnostics"]["inter_hard_mIoU"] is None
