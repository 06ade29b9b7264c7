"""Shared fixtures: the project's params shrunk to a tiny profile that runs in seconds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_params() -> dict:
    """The repository's params.yaml with sizes and iteration counts shrunk for tests."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source_size=[64, 32], target_size=[64, 32])
    params["generate"]["synthetic"].update(
        height=32, width=64, num_source=12, num_target_train=10, num_target_val=4
    )
    params["model"]["width"] = 4
    for section in ("source_only", "inter", "intra"):
        params[section].update(iterations=3, batch_size=2, log_every=2)
    # Several shards per folder, the last one partial: 10 maps in 3, 6 labels in 2.
    params["inference"].update(batch_size=4, shard_size=4)
    params["pseudo_labels"]["shard_size"] = 3
    # Not the training batch (2): validation during training must still agree with the
    # evaluate stage.
    params["evaluate"].update(batch_size=3, num_panels=2)
    params["figures"].update(gallery_k=2, score_bins=5)
    return params


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(tiny_params())


def write_params(directory: Path, params: dict) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
