"""The real-dataset profiles are valid params files with the paper's settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from intrada.config import ParamsError, check_all, get, read_params
from tests.conftest import REPO

PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted paths of every leaf of a params mapping."""
    found = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found |= keys(value, f"{path}.") if isinstance(value, dict) else {path}
    return found


@pytest.fixture(params=PROFILES, ids=[p.stem for p in PROFILES])
def profile(request, tmp_path, monkeypatch):
    """The profile in a folder holding its dataset roots and weights file (empty)."""
    shutil.copy(request.param, tmp_path / "params.yaml")
    raw = yaml.safe_load(request.param.read_text())
    for key in ("source_root", "target_root"):
        (tmp_path / raw["data"][key]).mkdir(parents=True)
    (tmp_path / raw["model"]["pretrained"]).touch()
    monkeypatch.chdir(tmp_path)
    return request.param.stem, read_params(tmp_path / "params.yaml")


# What each profile's framework released: AdvEnt / IntraDA's configuration for GTA5 and
# SYNTHIA, AdaptSegNet's (`train_gta2cityscapes_multi.py` as its LS-GAN command sets it)
# for Synscapes. docs/fidelity.md, "The protocol, profile by profile".
ADVENT = {
    "method": "advent",
    "pretrained": "DeepLab_resnet_pretrained_imagenet.pth",  # AdvEnt's ImageNet file
    "aspp_branches": 4,
    "iterations": (120000, 250000),  # EARLY_STOP of MAX_ITERS
    "eval_every": 2000,  # the snapshots the released test script scans
    "lambda_seg_aux": 0.1,
    "lambda_adv": (1e-3, 2e-4),  # main, aux
    "gan": "vanilla",  # (read only by adaptsegnet)
}
RELEASED = {
    "gta5_cityscapes": {**ADVENT, "source_size": (1280, 720)},
    "synthia_cityscapes": {**ADVENT, "source_size": (1280, 760)},
    "synscapes_cityscapes": {
        "method": "adaptsegnet",
        "pretrained": "DeepLab_resnet_pretrained_init-f81d91e8.pth",  # AdaptSegNet's init
        "aspp_branches": 2,  # its classifier's early return
        "iterations": (150000, 250000),  # NUM_STEPS_STOP of NUM_STEPS
        "eval_every": 5000,  # SAVE_PRED_EVERY
        "lambda_seg_aux": 0.0,  # its LS-GAN run is single-level: --lambda-seg 0
        "lambda_adv": (0.01, 0.0),  # --lambda-adv-target2 0.01 --lambda-adv-target1 0
        "gan": "ls",  # --gan LS
        "source_size": (1440, 720),  # Synscapes' own size
    },
}


def test_there_is_a_profile_per_real_source():
    assert [p.stem for p in PROFILES] == sorted(RELEASED)


def test_profile_passes_validation_with_the_paper_settings(profile):
    name, raw = profile
    released = RELEASED[name]
    check_all(raw)
    data, model = get(raw, "data"), get(raw, "model")
    assert data.name == name.split("_")[0]
    assert (data.source_size, data.target_size) == (released["source_size"], (1024, 512))
    assert (model.name, model.weights_format) == ("deeplabv2", "deeplab")
    assert Path(model.pretrained).name == released["pretrained"]
    assert model.aspp_branches == released["aspp_branches"]
    for section in ("source_only", "inter", "intra"):
        cfg = get(raw, section)
        assert (cfg.init, cfg.optimizer, cfg.lr, cfg.batch_size) == ("pretrained", "sgd", 2.5e-4, 1)
        assert (cfg.iterations, cfg.schedule_iterations) == released["iterations"]
        assert (cfg.momentum, cfg.weight_decay, cfg.poly_power) == (0.9, 5e-4, 0.9)
        assert (cfg.lambda_seg, cfg.lambda_seg_aux) == (1.0, released["lambda_seg_aux"])
        assert cfg.hflip is False
    for section in ("inter", "intra"):
        cfg = get(raw, section)
        assert (cfg.method, cfg.gan) == (released["method"], released["gan"])
        assert (cfg.lambda_adv_main, cfg.lambda_adv_aux) == released["lambda_adv"]
        assert cfg.lr_disc == 1e-4
        assert cfg.disc_channels == (64, 128, 256, 512)
    assert get(raw, "lambda") == 0.67
    assert get(raw, "intra").rounds == 1


def test_profile_sets_the_released_codes_behaviour(profile):
    # docs/fidelity.md, "The switches": every switch at the released code's value, the
    # snapshot included (the best on Cityscapes val, as the released protocol ranks and
    # reports with, at the framework's snapshot interval), PyTorch 0.4.1's Adam
    # arithmetic, and the ranking of the paper's main row (not normalised).
    name, raw = profile
    assert get(raw, "model").align_corners is True
    assert get(raw, "data").size_mismatch == "resize"
    assert get(raw, "compute").amp is False
    assert get(raw, "inference").normalize_entropy is False
    for section in ("source_only", "inter", "intra"):
        cfg = get(raw, section)
        assert (cfg.batchnorm, cfg.param_listing) == ("released", "released")
        assert (cfg.eval_every, cfg.select) == (RELEASED[name]["eval_every"], "best_val")
        assert cfg.adam == "released"


def test_profile_insists_on_a_gpu(profile):
    # `auto` would fall back to the CPU, where these sizes take months: `cuda` stops at
    # check_params instead (tests/test_real_data_path.py); the default keeps `auto`.
    _, raw = profile
    assert get(raw, "compute").device == "cuda"
    default = read_params(REPO / "params.yaml")
    assert get(default, "compute").device == "auto"


def test_profile_sets_every_key_the_default_sets(profile):
    _, raw = profile
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    missing = keys(default) - keys(raw) - {k for k in keys(default) if k.startswith("generate.")}
    assert missing == {"model.width"}  # the small network's only key


def test_profile_refuses_to_start_without_its_dataset(profile, tmp_path):
    _, raw = profile
    shutil.rmtree(tmp_path / raw["data"]["target_root"])
    with pytest.raises(ParamsError, match=r"data\.target_root = .* an existing folder"):
        check_all(raw)
