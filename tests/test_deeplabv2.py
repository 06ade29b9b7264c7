"""DeepLab-v2 ResNet-101: geometry, parameter groups and loading ImageNet weight files.

Random initialisations only: nothing is downloaded. A ResNet-101 state dict is ~170 MB on
disk, so the one the loading tests share is built once per module, and every file is
deleted after its test.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from intrada.classes import dataset_classes
from intrada.config import NO_FILE, ModelParams
from intrada.errors import IntradaError
from intrada.models.deeplabv2 import ASPP_RATES, DeepLabV2, load_pretrained
from intrada.models.small import DilatedClassifier
from intrada.runs import initial_model
from intrada.training import AdaptationStep, set_batchnorm
from tests.parity import released_settings

NUM_CLASSES = 5
# 64 x 96: conv1 gives 32 x 48, which the max-pool halves to 16 x 24 rounding down
# (torchvision) and to 17 x 25 rounding up (deeplab); layer2 halves once more.
IMAGE = (2, 3, 64, 96)
STRIDE8 = {"torchvision": (8, 12), "deeplab": (9, 13)}


@pytest.fixture(scope="module")
def resnet101_state():
    torch.manual_seed(0)
    return torchvision.models.resnet101().state_dict()


@pytest.fixture(scope="module")
def resnet101_file(tmp_path_factory, resnet101_state):
    path = tmp_path_factory.mktemp("weights") / "resnet101.pth"
    torch.save(resnet101_state, path)
    yield path
    path.unlink()


@pytest.fixture
def save(tmp_path):
    """torch.save into tmp_path, deleting the (large) files after the test (and any
    other file appended to `save.paths`)."""
    paths = []

    def _save(obj, name):
        paths.append(tmp_path / name)
        torch.save(obj, paths[-1])
        return paths[-1]

    _save.paths, _save.directory = paths, tmp_path
    yield _save
    for path in paths:
        path.unlink(missing_ok=True)


def deeplab_layout(state):
    """The Caffe-converted file's layout: `Scale.` prefix, its own classifier under
    layer5, no BN step counters."""
    renamed = {
        f"Scale.{k}": v
        for k, v in state.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    for i in range(4):
        renamed[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.zeros(21, 2048, 3, 3)
        renamed[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.zeros(21)
    return renamed


def assert_backbone_equals(model, state):
    own = model.backbone.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("weights_format", ["torchvision", "deeplab"])
def test_forward_backward_gives_both_heads_at_stride_8(weights_format):
    torch.manual_seed(0)
    model = DeepLabV2(NUM_CLASSES, weights_format)
    aux, main = model(torch.rand(IMAGE))
    size = STRIDE8[weights_format]
    assert aux.shape == main.shape == (2, NUM_CLASSES, *size)
    (aux.square().mean() + main.square().mean()).backward()
    b = model.backbone
    for param in (
        b.conv1.weight,
        b.layer3[0].conv2.weight,
        b.layer4[-1].conv3.weight,
        model.aux_classifier.branches[0].weight,
        model.main_classifier.branches[3].weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("weights_format", ["torchvision", "deeplab"])
def test_dilation_and_stride_placement(weights_format):
    b = DeepLabV2(NUM_CLASSES, weights_format).backbone
    first = b.layer2[0]
    if weights_format == "deeplab":
        assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
        assert b.maxpool.ceil_mode
    else:
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
        assert not b.maxpool.ceil_mode
    for layer, dilation in ((b.layer3, 2), (b.layer4, 4)):
        for block in layer:
            assert block.conv2.dilation == block.conv2.padding == (dilation, dilation)
            assert block.conv2.stride == (1, 1)
    assert not hasattr(b, "fc") and not hasattr(b, "avgpool")


@pytest.mark.parametrize("weights_format", ["torchvision", "deeplab"])
def test_input_is_normalised_for_the_weights_format(weights_format):
    model = DeepLabV2(NUM_CLASSES, weights_format)
    seen = []
    model.backbone.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        model(image)
    if weights_format == "deeplab":
        bgr_mean = torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(1, 3, 1, 1)
        expected = image.flip(1) * 255.0 - bgr_mean
    else:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        expected = (image - mean) / std
    assert torch.allclose(seen[0], expected, atol=1e-4)


def test_unknown_weights_format_is_refused():
    with pytest.raises(ValueError, match="unknown weights_format 'caffe'"):
        DeepLabV2(NUM_CLASSES, "caffe")


def test_param_groups_cover_every_parameter_once_with_10x_classifiers():
    model = DeepLabV2(NUM_CLASSES)
    groups = model.param_groups()
    ids = [id(p) for params, _ in groups for p in params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    heads = {id(p) for m in (model.aux_classifier, model.main_classifier) for p in m.parameters()}
    assert {id(p) for params, lr in groups if lr == 10.0 for p in params} == heads
    assert {lr for _, lr in groups} == {1.0, 10.0}


def test_released_listing_repeats_backbone_tensors_per_enclosing_module():
    # As the released code's 1x group: conv1 once, a bottleneck's convolutions three
    # times (layer, block, conv), downsample convolutions four times (layer, block,
    # downsample, conv); BatchNorm's frozen parameters are filtered out by the
    # optimiser (requires_grad), the classifiers are listed once.
    model = DeepLabV2(NUM_CLASSES)
    set_batchnorm(model, "released")
    (trunk, one), (heads, ten) = model.param_groups("released")
    counts: dict[int, int] = {}
    for p in trunk:
        counts[id(p)] = counts.get(id(p), 0) + 1
    b = model.backbone
    assert counts[id(b.conv1.weight)] == 1
    assert counts[id(b.layer1[0].conv1.weight)] == 3
    assert counts[id(b.layer4[2].conv3.weight)] == 3
    assert counts[id(b.layer3[0].downsample[0].weight)] == 4
    assert counts[id(b.layer3[5].bn2.weight)] == 3  # listed, but frozen
    trainable = [p for p in trunk if p.requires_grad]
    convs = [m for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(trainable) == 1 + 3 * (len(convs) - 1 - 4) + 4 * 4  # 4 downsample convs
    assert len({id(p) for p in heads}) == len(heads) and (one, ten) == (1.0, 10.0)


def test_state_dict_holds_weights_but_not_normalisation_constants():
    model = DeepLabV2(NUM_CLASSES, "deeplab")
    keys = set(model.state_dict())
    assert "mean" not in keys and "std" not in keys
    assert all(k.split(".")[0] in {"backbone", "aux_classifier", "main_classifier"} for k in keys)
    # The classifiers start as the reference's: weights normal(0, 0.01).
    weight = model.main_classifier.branches[0].weight
    assert weight.shape == (NUM_CLASSES, 2048, 3, 3) and 0.009 < weight.std() < 0.011


def test_loads_a_torchvision_state_dict(resnet101_file, resnet101_state):
    torch.manual_seed(1)
    model, twin = DeepLabV2(NUM_CLASSES).eval(), DeepLabV2(NUM_CLASSES).eval()
    twin.aux_classifier.load_state_dict(model.aux_classifier.state_dict())
    twin.main_classifier.load_state_dict(model.main_classifier.state_dict())
    heads = {k: v.clone() for k, v in model.state_dict().items() if "classifier" in k}
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before, twin_before = model(image)[1], twin(image)[1]
    assert not torch.allclose(before, twin_before)

    assert load_pretrained(model, resnet101_file) == ["fc.weight", "fc.bias"]
    load_pretrained(twin, resnet101_file)

    assert_backbone_equals(model, {k: v for k, v in resnet101_state.items() if "fc." not in k})
    assert all(torch.equal(model.state_dict()[k], v) for k, v in heads.items())
    with torch.no_grad():
        after, twin_after = model(image)[1], twin(image)[1]
    # Same file, same classifiers: the output no longer depends on the random backbone.
    assert torch.allclose(after, twin_after) and not torch.allclose(after, before)


def test_loads_the_deeplab_layout(save, resnet101_state):
    state = deeplab_layout(resnet101_state)
    path = save(state, "DeepLab_resnet_pretrained_imagenet.pth")
    model = DeepLabV2(NUM_CLASSES, "deeplab")
    model.backbone.bn1.num_batches_tracked.fill_(7)
    ignored = load_pretrained(model, path)
    assert ignored == [k for k in state if k.startswith("Scale.layer5.")] and len(ignored) == 8
    assert_backbone_equals(
        model,
        {k: v for k, v in resnet101_state.items() if "fc." not in k and "num_batches" not in k},
    )
    assert model.backbone.bn1.num_batches_tracked == 7  # absent from the file: kept


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_loads_a_wrapped_state_dict_without_the_scale_prefix(save, resnet101_state, wrapper):
    unprefixed = {k.removeprefix("Scale."): v for k, v in deeplab_layout(resnet101_state).items()}
    path = save({wrapper: unprefixed, "epoch": 3}, "wrapped.pth")
    model = DeepLabV2(NUM_CLASSES, "deeplab")
    assert len(load_pretrained(model, path)) == 8
    assert_backbone_equals(model, {k: v for k, v in unprefixed.items() if "layer5." not in k})


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(DeepLabV2(NUM_CLASSES), path)
    message = assert_one_line_naming(exc_info, path)
    assert "file not found; expected an ImageNet ResNet-101 state dict" in message


@pytest.mark.parametrize(
    "content, expected",
    [([torch.zeros(1)], "not a dict of tensors"), ({"conv1.weight": "abc"}, "not a dict")],
)
def test_a_file_that_is_not_a_state_dict_is_refused(save, content, expected):
    path = save(content, "list.pth")
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(DeepLabV2(NUM_CLASSES), path)
    assert expected in assert_one_line_naming(exc_info, path)


def test_an_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file\n" * 10)
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(DeepLabV2(NUM_CLASSES), path)
    assert "not a readable weights file" in assert_one_line_naming(exc_info, path)


def test_a_resnet50_state_dict_is_refused_naming_the_missing_keys(save):
    path = save(torchvision.models.resnet50().state_dict(), "resnet50.pth")
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(DeepLabV2(NUM_CLASSES), path)
    message = assert_one_line_naming(exc_info, path)
    # ResNet-50 has ResNet-101's block shapes but 6 blocks in layer3, not 23: 17 blocks
    # of 3 convs and 3 BNs (weight, bias, running mean and var) are missing.
    assert "backbone keys missing: 255 (layer3.6.conv1.weight," in message


def test_a_shape_mismatch_names_the_key_and_both_shapes(save):
    path = save({"conv1.weight": torch.zeros(64, 4, 7, 7)}, "rgbd.pth")
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(DeepLabV2(NUM_CLASSES), path)
    message = assert_one_line_naming(exc_info, path)
    assert "conv1.weight has shape (64, 4, 7, 7) in the file but (64, 3, 7, 7)" in message


def test_an_unexpected_key_is_refused(save, resnet101_state):
    path = save({**resnet101_state, "extra.weight": torch.zeros(3)}, "extra.pth")
    model = DeepLabV2(NUM_CLASSES)
    before = model.backbone.conv1.weight.clone()
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(model, path)
    assert "unexpected keys: 1 (extra.weight)" in assert_one_line_naming(exc_info, path)
    assert torch.equal(model.backbone.conv1.weight, before)  # nothing half-loaded


@pytest.mark.parametrize(
    "key, built_for, wanted",
    [("Scale.conv1.weight", "torchvision", "deeplab"), ("fc.bias", "deeplab", "torchvision")],
)
def test_weights_of_the_other_format_are_refused(save, key, built_for, wanted):
    # Right tensors, wrong input normalisation and stride placement: refused by layout.
    path = save({key: torch.zeros(1)}, "other.pth")
    with pytest.raises(IntradaError) as exc_info:
        load_pretrained(DeepLabV2(NUM_CLASSES, built_for), path)
    assert f"expected weights_format '{wanted}'" in assert_one_line_naming(exc_info, path)


def test_pretrained_init_loads_the_backbone_and_trains_with_10x_heads(
    resnet101_file, resnet101_state
):
    classes = dataset_classes("gta5")
    model_params = ModelParams(
        name="deeplabv2",
        align_corners=False,
        weights_format="torchvision",
        pretrained=str(resnet101_file),
    )
    model, init_from = initial_model(model_params, classes, seed=0, init_path=None, pretrained=True)
    assert init_from == {"path": resnet101_file.as_posix(), "stage": "pretrained"}
    assert_backbone_equals(
        model, {k: v for k, v in resnet101_state.items() if not k.startswith("fc.")}
    )
    # The paper's optimiser: SGD, classifiers at 10x, BatchNorm frozen (batch 1).
    cfg = released_settings(
        "source_only",
        iterations=4,
        schedule_iterations=8,
        adam="current",
        batchnorm="frozen",
        param_listing="unique",
    )
    set_batchnorm(model, "frozen")
    step = AdaptationStep(model, cfg, len(classes))
    step.set_iteration(2)
    lrs = sorted({g["lr"] for g in step.optimizer.param_groups})
    base = 2.5e-4 * (1 - 2 / 8) ** 0.9  # decays over schedule_iterations, not iterations
    assert lrs == pytest.approx([base, 10 * base])
    bn_before = model.backbone.bn1.running_mean.clone()
    batch = {"image": torch.rand(1, 3, 64, 96), "label": torch.randint(0, 19, (1, 64, 96))}
    losses = step(batch, None)
    assert set(losses) == {"loss_seg_src_main", "loss_seg_src_aux"}
    assert torch.equal(model.backbone.bn1.running_mean, bn_before)
    assert not torch.equal(model.backbone.conv1.weight, resnet101_state["conv1.weight"])


# --- released networks (init: file) --------------------------------------------------


def released_layout(state):
    """A trained network as the released AdvEnt / IntraDA code saves it
    (`torch.save(model.state_dict())` of its ResNetMulti): the backbone's names without
    prefix, `layer5` = the ASPP classifier on layer3 (our aux head), `layer6` = the one on
    layer4 (our main head). Written out here, independently of the loader's table."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            renamed[key.removeprefix("backbone.")] = value
        elif key.startswith("aux_classifier.branches."):
            renamed["layer5.conv2d_list." + key.removeprefix("aux_classifier.branches.")] = value
        elif key.startswith("main_classifier.branches."):
            renamed["layer6.conv2d_list." + key.removeprefix("main_classifier.branches.")] = value
        else:
            raise AssertionError(key)
    return renamed


@pytest.fixture(scope="module")
def trained_deeplab():
    """A DeepLab-v2 (Caffe geometry) with random weights and running statistics, as a
    trained network would have non-trivial ones."""
    torch.manual_seed(3)
    model = DeepLabV2(19, "deeplab", align_corners=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
    return model.eval()


RELEASED_PARAMS = ModelParams(
    name="deeplabv2", align_corners=True, pretrained=NO_FILE, weights_format="deeplab"
)


def test_a_released_state_dict_loads_as_the_same_network(trained_deeplab, save):
    from intrada.checkpoint import model_meta, save_model
    from intrada.runs import arch_config, start_file_model

    classes = dataset_classes("gta5")
    state = trained_deeplab.state_dict()
    released = released_layout(state)
    assert "layer6.conv2d_list.3.bias" in released and "layer4.2.bn3.running_var" in released
    released_path = save(released, "gta2cityscapes_advent.pth")
    # The same weights the usual way: a model file this pipeline writes.
    ours_path = save.directory / "model.pt"
    meta = model_meta(
        arch="deeplabv2",
        arch_config=arch_config(RELEASED_PARAMS),
        classes=classes,
        stage="inter",
        params={},
        init_from=None,
    )
    save_model(ours_path, trained_deeplab, meta)
    save.paths.append(ours_path)

    from_released, origin = start_file_model(RELEASED_PARAMS, classes, released_path)
    from_ours, ours_origin = start_file_model(RELEASED_PARAMS, classes, ours_path)
    assert origin["stage"] == "released" and ours_origin["stage"] == "inter"
    assert len(origin["sha256"]) == 64
    loaded = from_released.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    image = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained_deeplab(image)
        for model in (from_released.eval(), from_ours.eval()):
            for got, want in zip(model(image), expected, strict=True):
                assert torch.equal(got, want)


def without(state, key):
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: {f"module.{k}": v for k, v in s.items()},
            r"unexpected key module\.conv1\.weight; expected a released",
        ),
        (
            lambda s: {f"Scale.{k}": v for k, v in s.items()},
            r"unexpected key Scale\.conv1\.weight \(an ImageNet file\? .*init: pretrained\)",
        ),
        (
            lambda s: without(s, "layer6.conv2d_list.2.weight"),
            r"key layer6\.conv2d_list\.2\.weight missing",
        ),
        (
            lambda s: {**s, "layer6.conv2d_list.0.bias": torch.zeros(16)},
            r"layer6\.conv2d_list\.0\.bias has shape \(16,\) in the file but \(19,\) in the "
            r"model \(19 classes\)",
        ),
        (
            lambda s: {k.replace("downsample.0", "downsample.conv"): v for k, v in s.items()},
            r"unexpected key layer1\.0\.downsample\.conv\.weight",
        ),
    ],
)
def test_another_layout_is_refused_naming_the_file_and_the_first_offending_key(
    trained_deeplab, change, message
):
    from intrada.models.deeplabv2 import load_released

    state = change(released_layout(trained_deeplab.state_dict()))
    model = DeepLabV2(19, "deeplab", align_corners=True)
    before = model.backbone.conv1.weight.clone()
    with pytest.raises(IntradaError, match=message) as exc_info:
        load_released(model, state, "weights/other.pth")
    assert_one_line_naming(exc_info, "weights/other.pth")
    assert torch.equal(model.backbone.conv1.weight, before)  # nothing half-loaded


def test_old_files_without_step_counters_load(trained_deeplab):
    from intrada.models.deeplabv2 import load_released

    state = released_layout(trained_deeplab.state_dict())
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = DeepLabV2(19, "deeplab", align_corners=True)
    load_released(model, state, "old.pth")
    assert torch.equal(
        model.main_classifier.branches[1].weight, state["layer6.conv2d_list.1.weight"]
    )


def test_a_released_network_needs_the_deeplab_weights_format(trained_deeplab, save):
    from intrada.runs import start_file_model

    path = save(released_layout(trained_deeplab.state_dict()), "released.pth")
    params = ModelParams(
        name="deeplabv2", align_corners=True, pretrained=NO_FILE, weights_format="torchvision"
    )
    with pytest.raises(IntradaError, match=r"needs model.name deeplabv2 with weights_format "):
        start_file_model(params, dataset_classes("gta5"), path)


# --- AdaptSegNet: its classifier, its initialisation file ------------------------------


def test_adaptsegnets_classifier_sums_its_first_two_branches_and_freezes_the_rest():
    # The released AdaptSegNet classifier returns after adding its second branch.
    torch.manual_seed(0)
    head = DilatedClassifier(8, 3, ASPP_RATES, summed=2)
    x = torch.randn(1, 8, 9, 13)
    assert torch.equal(head(x), head.branches[0](x) + head.branches[1](x))
    assert [b.weight.requires_grad for b in head.branches] == [True, True, False, False]
    model = DeepLabV2(NUM_CLASSES, "deeplab", aspp_branches=2)
    cfg = released_settings("source_only", iterations=1, lr=1.0)
    set_batchnorm(model, "released")
    listed = {
        id(p)
        for g in AdaptationStep(model, cfg, NUM_CLASSES).optimizer.param_groups
        for p in g["params"]
    }
    unused = [
        *model.aux_classifier.branches[2:].parameters(),
        *model.main_classifier.branches[2:].parameters(),
    ]
    assert unused and not any(id(p) in listed for p in unused)


def adaptsegnet_init_layout(model: DeepLabV2) -> tuple[dict, dict]:
    """A file in the layout of AdaptSegNet's initialisation file (the DeepLab-v2 init of
    ImageNet + COCO, `DeepLab_resnet_pretrained_init-f81d91e8.pth`, a download in the
    released code): every backbone tensor under `Scale.`, its own single-level
    classifier as `Scale.layer5.*` (on the 2048-channel layer4), no BatchNorm step
    counters. Tensor k holds the value k everywhere, stored as one number expanded to
    its shape (a few kB on disk, not 170 MB). Returns (file contents, expected backbone)."""
    blob, expected = {}, {}
    for k, (name, tensor) in enumerate(model.backbone.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        value = torch.full((1,) * tensor.dim(), float(k)).expand(tensor.shape)
        blob[f"Scale.{name}"] = value
        expected[name] = value
    for i in range(4):
        blob[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.zeros(1, 1, 1, 1).expand(
            21, 2048, 3, 3
        )
        blob[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.zeros(1).expand(21)
    return blob, expected


def test_adaptsegnets_initialisation_file_starts_the_backbone(save):
    classes = dataset_classes("gta5")
    params = ModelParams(
        name="deeplabv2",
        align_corners=True,
        pretrained=NO_FILE,
        weights_format="deeplab",
        aspp_branches=2,
    )
    torch.manual_seed(0)
    fresh = DeepLabV2(len(classes), "deeplab", align_corners=True, aspp_branches=2)
    blob, expected = adaptsegnet_init_layout(fresh)
    path = save(blob, "DeepLab_resnet_pretrained_init-f81d91e8.pth")
    assert path.stat().st_size < 1_000_000
    params = dataclasses.replace(params, pretrained=str(path))
    model, init_from = initial_model(params, classes, seed=0, init_path=None, pretrained=True)
    assert init_from == {"path": path.as_posix(), "stage": "pretrained"}
    assert_backbone_equals(model, expected)
    # The file's classifier is skipped (as the released code skips Scale.layer5 for 19
    # classes): both heads keep the seeded initialisation, and sum two branches.
    for head in ("aux_classifier", "main_classifier"):
        for key, value in getattr(fresh, head).state_dict().items():
            assert torch.equal(getattr(model, head).state_dict()[key], value), key
    assert model.main_classifier.summed == 2
