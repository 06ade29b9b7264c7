"""The real-dataset profiles are valid params files with the paper's settings."""

from __future__ import annotations

import shutil

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


def test_there_is_a_profile_per_real_source():
    assert [p.stem for p in PROFILES] == ["gta5_cityscapes", "synthia_cityscapes"]


def test_profile_passes_validation_with_the_paper_settings(profile):
    name, raw = profile
    check_all(raw)
    data, model = get(raw, "data"), get(raw, "model")
    assert data.name == name.split("_")[0]
    assert data.target_size == (1024, 512)
    assert model.name == "deeplabv2"
    for section in ("source_only", "inter", "intra"):
        cfg = get(raw, section)
        assert (cfg.init, cfg.optimizer, cfg.lr, cfg.batch_size) == ("pretrained", "sgd", 2.5e-4, 1)
        assert (cfg.iterations, cfg.schedule_iterations) == (120000, 250000)
        assert (cfg.momentum, cfg.weight_decay, cfg.poly_power) == (0.9, 5e-4, 0.9)
    for section in ("inter", "intra"):
        cfg = get(raw, section)
        assert (cfg.lambda_adv_main, cfg.lambda_adv_aux, cfg.lr_disc) == (1e-3, 2e-4, 1e-4)
        assert cfg.disc_channels == (64, 128, 256, 512)
    assert get(raw, "lambda") == 0.67


def test_profile_sets_the_released_codes_behaviour(profile):
    # docs/fidelity.md, "The switches": every switch at the released code's value, the
    # snapshot included (the best on Cityscapes val, as the released protocol ranks and
    # reports with), and PyTorch 0.4.1's Adam arithmetic.
    _, raw = profile
    assert get(raw, "model").align_corners is True
    assert get(raw, "data").size_mismatch == "resize"
    assert get(raw, "compute").amp is False
    for section in ("source_only", "inter", "intra"):
        cfg = get(raw, section)
        assert (cfg.batchnorm, cfg.param_listing) == ("released", "released")
        assert (cfg.eval_every, cfg.select) == (2000, "best_val")
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
