"""A training run from files to files: index tables in, model file and curves out.

The three training stages (source-only, inter, intra) differ only in the tables and
the start model they pass here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrada.checkpoint import (
    is_model_file,
    load_model,
    model_from_blob,
    model_meta,
    params_hash,
    read_weights,
    save_model,
)
from intrada.classes import ClassSet
from intrada.compute import CPU, Compute
from intrada.config import ModelParams, TrainParams, as_dict
from intrada.data import SegmentationSet, load_index
from intrada.errors import IntradaError
from intrada.io import atomic_path, read_parquet
from intrada.models import build_model, load_pretrained
from intrada.models.deeplabv2 import RELEASED_EXPECTED, load_released, state_dict_of
from intrada.resume import Checkpoints, file_sha256, run_key
from intrada.selection import TargetProbe, probe_indices
from intrada.space import training_plan
from intrada.training import Diverged, train
from intrada.validation import Selection

log = logging.getLogger(__name__)

# Each training stage draws its batch order from its own random stream.
RUN_KEYS = {"source_only": 1, "inter": 2, "intra": 3}


# The data keys training reads (dvc.yaml declares these for the training stages).
TRAINING_DATA_KEYS = ("name", "source_size", "target_size")


def declared_params(sections: dict[str, Any]) -> dict[str, Any]:
    """What a training stage records as "trained with": its params as dvc.yaml declares
    them (of `data` only the keys training reads: the dataset's roots may differ between
    machines holding the same data)."""
    params = {k: as_dict(v) for k, v in sections.items() if k != "data"}
    data = as_dict(sections["data"])
    params["data"] = {k: data[k] for k in TRAINING_DATA_KEYS}
    return params


def arch_config(model_params: ModelParams) -> dict[str, Any]:
    """Constructor arguments of the architecture: everything but its name and the
    ImageNet weights file (an input of training, not a property of the network)."""
    return {k: v for k, v in as_dict(model_params).items() if k not in ("name", "pretrained")}


def initial_model(
    model_params: ModelParams,
    classes: ClassSet,
    seed: int,
    init_path: Path | None,
    pretrained: bool = False,
    from_file: bool = False,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """A fresh network (seeded; with `pretrained`, its backbone from `model.pretrained`),
    or the weights of a model file: an earlier stage's, or with `from_file` (`init:
    file`) a file of the user's, which may also be a released AdvEnt / IntraDA network
    (`start_file_model`).

    Returns the model and, when loaded, where from (path and, for a model file, that
    model's params hash).
    """
    torch.manual_seed(seed)
    if init_path is None:
        model = build_model(model_params.name, len(classes), **arch_config(model_params))
        if not pretrained:
            return model, None
        ignored = load_pretrained(model, model_params.pretrained)
        log.info("backbone from %s (ignored: %d keys)", model_params.pretrained, len(ignored))
        return model, {"path": Path(model_params.pretrained).as_posix(), "stage": "pretrained"}
    if from_file:
        return start_file_model(model_params, classes, init_path)
    model, meta = load_model(init_path, classes)
    check_architecture(init_path, meta, model_params)
    return model, {
        "path": Path(init_path).as_posix(),
        "stage": meta["stage"],
        "params_sha256": meta["params_sha256"],
    }


def check_architecture(path: Path, meta: dict[str, Any], model_params: ModelParams) -> None:
    """A loaded model file must hold the network the params' model section describes."""
    wanted = (model_params.name, arch_config(model_params))
    if (meta["arch"], meta["arch_config"]) != wanted:
        raise IntradaError(
            f"{path}: model is {meta['arch']} {meta['arch_config']}; params.yaml model "
            f"section asks for {wanted[0]} {wanted[1]} (re-run the earlier stage)"
        )


def start_file_model(
    model_params: ModelParams, classes: ClassSet, path: Path, match_params: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of an `init: file` file: a model file this pipeline wrote, or a
    released network's state dict (DeepLab-v2 with `weights_format: deeplab` only;
    `models.deeplabv2.load_released`). Where from records the file's sha256, since
    params name only its path. A model file must hold the params' architecture unless
    `match_params` is false (evaluating a file: it carries its own architecture)."""
    blob = read_weights(path, RELEASED_EXPECTED)
    origin = {"path": Path(path).as_posix(), "sha256": file_sha256(path)}
    if is_model_file(blob):
        model, meta = model_from_blob(path, blob, classes)
        if match_params:
            check_architecture(path, meta, model_params)
        return model, {**origin, "stage": meta["stage"], "params_sha256": meta["params_sha256"]}
    if (model_params.name, model_params.weights_format) != ("deeplabv2", "deeplab"):
        raise IntradaError(
            f"{path}: not a model file of this pipeline, so read as a released DeepLab-v2 "
            f"network, which needs model.name deeplabv2 with weights_format deeplab; "
            f"params.yaml has {model_params.name}"
            + (f" with {model_params.weights_format}" if model_params.weights_format else "")
        )
    state = state_dict_of(blob)
    if state is None:
        raise IntradaError(f"{path}: not a dict of tensors; {RELEASED_EXPECTED}")
    model = build_model(model_params.name, len(classes), **arch_config(model_params))
    load_released(model, state, path)
    log.info("released network from %s (%d tensors)", path, len(state))
    return model, {**origin, "stage": "released"}


def run_training(
    *,
    stage: str,
    cfg: TrainParams,
    seed: int,
    model_params: ModelParams,
    classes: ClassSet,
    source_index: Path,
    target_index: Path | None,
    init_path: Path | None,
    model_out: Path,
    live_dir: Path,
    params: dict[str, Any],
    source_size: tuple[int, int] | None = None,
    target_size: tuple[int, int] | None = None,
    root: Path = Path("."),
    compute: Compute = CPU,
    checkpoint_dir: Path | None = None,
    val_index: Path | None = None,
    probe_index: Path | None = None,
    run_key_of_stage: int | None = None,
) -> nn.Module:
    """Train on a labelled source-like index (and an unlabelled target index unless the
    method is source_only), log curves with dvclive and save the model with provenance.

    Images (and source labels) are resized to `source_size` / `target_size` (width,
    height); None keeps them as stored. With `val_index` (target-val; an empty table when
    the target has no labelled val) the run validates every `cfg.eval_every` iterations,
    at the target size with predictions upsampled to each label as the evaluate stage
    does; the curve is logged as `val/mIoU` and stored in the model file's
    `meta["validation"]`, with the snapshot `cfg.select` picked.
    With `probe_index` (unlabelled target-train) and `cfg.probe_images` > 0, each
    validation point also computes the label-free criteria (`intrada.selection`) on a
    fixed subset of those images, logged as `select/<criterion>`. `run_key_of_stage`
    gives the run its own batch order (default: the stage's, `RUN_KEYS`).
    With several processes (torchrun) every process trains, and only the main one
    validates, logs curves and writes the model. With `checkpoint_dir` an interrupted
    run resumes (`intrada.resume`).

    Before training, the free space must hold the model file and two checkpoints
    (`space.training_plan`), else one line says so.

    `cfg.init` = file starts from `cfg.init_file` (`start_file_model`); with
    `cfg.iterations` = 0 the model file written is that model as it is. A run that
    diverges (`training.Diverged`) stops with one line naming the stage, the iteration
    and the loss, and writes no model file."""
    if cfg.init == "file":
        init_path = Path(cfg.init_file)
    source_table = load_index(source_index, labelled=True)
    # Training reads each image many times (validation: every eval_every iterations):
    # sets that fit in memory stay decoded there (`data.KEEP_DECODED_BYTES`).
    source = SegmentationSet(
        source_table, classes, root, labelled=True, size=source_size, keep_decoded=True
    )

    def unlabelled(index: Path) -> SegmentationSet:
        return SegmentationSet(
            load_index(index, labelled=False),
            classes,
            root,
            labelled=False,
            size=target_size,
            keep_decoded=True,
        )

    target = None
    if cfg.method != "source_only":
        if target_index is None:
            raise IntradaError(f"{stage}.method = {cfg.method} needs a target index")
        target = unlabelled(target_index)
    val_set = None
    if val_index is not None and cfg.eval_every > 0 and read_parquet(val_index).empty:
        # The user's own target without labels: nothing to validate on.
        log.info("%s: no labelled target-val: no val/mIoU during training", stage)
    elif val_index is not None and cfg.eval_every > 0:
        val_set = SegmentationSet(
            load_index(val_index, labelled=True),
            classes,
            root,
            labelled=True,
            size=target_size,
            resize_labels=False,
            keep_decoded=True,
        )
    probe = None
    if probe_index is not None and cfg.probe_images > 0 and cfg.eval_every > 0:
        # The pipeline probes the images it adapts on: one set, decoded once.
        same = target is not None and Path(probe_index) == Path(target_index)
        probe_set = target if same else unlabelled(probe_index)
        probe = TargetProbe(probe_set, probe_indices(len(probe_set), cfg.probe_images), 16)
    model, init_from = initial_model(
        model_params,
        classes,
        seed,
        init_path,
        pretrained=cfg.init == "pretrained",
        from_file=cfg.init == "file",
    )
    if compute.main:  # the model file and checkpoints fit, or one line before training
        training_plan(model, cfg, len(classes), model_out, checkpoint_dir).check()
    log.info(
        "%s: %s training, %d iterations, %d source-like%s images, start: %s, on %s x %d",
        stage,
        cfg.method,
        cfg.iterations,
        len(source),
        f" / {len(target)} target" if target is not None else "",
        init_from["path"] if init_from else "scratch",
        compute.device,
        compute.world,
    )
    # Bit-identical reruns on the CPU; on CUDA, cudnn's fastest kernels win instead.
    torch.use_deterministic_algorithms(not compute.cuda, warn_only=True)

    checkpoints = None
    if checkpoint_dir is not None:
        inputs = [source_index, target_index if target is not None else None, init_path]
        if cfg.init == "pretrained":
            inputs.append(Path(model_params.pretrained))
        if val_set is not None:
            inputs.append(val_index)
        if probe is not None:
            inputs.append(probe_index)
        if classes.table is not None and classes.table.file is not None:
            inputs.append(Path(classes.table.file))  # a class table file: its content counts
        key = run_key({"params": params, "processes": compute.world}, inputs)
        checkpoints = Checkpoints(checkpoint_dir, cfg.checkpoint_every, key)

    def run(live: LiveLog | None = None) -> Selection:
        if cfg.iterations == 0:  # init: file, and the model is that file as it is
            log.info("%s: 0 iterations: the model is %s as it is", stage, init_path)
            if checkpoint_dir is not None:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)  # a declared output
            return Selection(cfg.select, 0)
        try:
            return train(
                model,
                source,
                target,
                cfg,
                seed,
                on_log=live,
                run_key=RUN_KEYS[stage] if run_key_of_stage is None else run_key_of_stage,
                compute=compute,
                checkpoints=checkpoints,
                val_set=val_set,
                on_val=live.validation if live is not None else None,
                probe=probe,
            )
        except Diverged as exc:
            if not compute.main:
                raise SystemExit(1) from None  # the main process says why, once
            kept = "no checkpoint written"
            if checkpoints is not None and checkpoints.saved_iteration is not None:
                kept = f"{checkpoints.path} (iteration {checkpoints.saved_iteration}) kept"
            raise IntradaError(f"{stage}: {exc}; no model written, {kept}") from None

    if not compute.main:
        run()
        return model
    with atomic_path(live_dir) as tmp_live, LiveLog(tmp_live) as live:
        selection = run(live)
    meta = model_meta(
        arch=model_params.name,
        arch_config=arch_config(model_params),
        classes=classes,
        stage=stage,
        params=params,
        init_from=init_from,
    )
    meta["validation"] = selection.summary(cfg.iterations)
    # Where it ran: results depend on it, the params hash does not.
    meta["compute"] = {
        "device": compute.device.type,
        "amp_bf16": compute.amp,
        "compiled": compute.compile,
        "processes": compute.world,
        "threads": torch.get_num_threads(),  # CPU floats depend on it (oneDNN's splits)
    }
    save_model(model_out, model, meta)
    log.info("%s: wrote %s (params %s)", stage, model_out, params_hash(params)[:12])
    return model


class LiveLog:
    """Training curves through dvclive: `train/<loss>` per logged iteration, and per
    validation point `val/mIoU` and the label-free criteria `select/<criterion>`, on
    the same step axis (the iteration)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __enter__(self) -> LiveLog:
        from dvclive import Live  # imported here: slow, and only training needs it

        # dvcyaml=False: dvc.yaml declares these files itself (dvclive would rewrite it).
        self.live = Live(dir=str(self.directory), dvcyaml=False, save_dvc_exp=False)
        return self

    def __call__(self, iteration: int, values: dict[str, float]) -> None:
        self.live.step = iteration
        for key, value in values.items():
            self.live.log_metric(f"train/{key}", value)
        self.live.next_step()

    def validation(
        self, iteration: int, miou: float | None, criteria: dict[str, float] | None = None
    ) -> None:
        values = {f"select/{k}": v for k, v in (criteria or {}).items()}
        if miou is not None:  # None: no labels, or no class had an IoU: nothing to plot
            values["val/mIoU"] = miou
        if not values:
            return
        self.live.step = iteration
        for key, value in values.items():
            self.live.log_metric(key, value)
        self.live.next_step()

    def __exit__(self, *exc) -> None:
        self.live.end()
