import copy
import dataclasses

import pytest
import torch

from intrada.config import get
from intrada.entropy import image_entropy, self_information
from intrada.losses import SOURCE_LABEL, TARGET_LABEL, adversarial_loss
from intrada.models import build_model, upsample
from intrada.training import (
    AdaptationStep,
    ListedSGD,
    ReleasedAdam,
    make_optimizer,
    poly_lr,
    set_batchnorm,
)
from tests.conftest import tiny_params


def cfg(section="inter", **changes):
    return dataclasses.replace(get(tiny_params(), section), **changes)


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = {
        "image": torch.rand(2, 3, 32, 64, generator=g),
        "label": torch.randint(0, 8, (2, 32, 64), generator=g),
    }
    src["label"][:, :4] = 255  # some ignored pixels
    trg = {"image": torch.rand(2, 3, 32, 64, generator=g)}
    return src, trg


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return build_model("small", 8, width=4).train()


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_poly_schedule():
    assert poly_lr(1.0, 0, 100, 0.9) == 1.0
    assert poly_lr(1.0, 50, 100, 1.0) == pytest.approx(0.5)
    assert poly_lr(2.0, 100, 100, 0.9) == 0.0


def test_advent_step_updates_network_and_both_discriminators():
    model = fresh_model()
    step = AdaptationStep(model, cfg(lr=1e-2, lr_disc=1e-2), num_classes=8)
    before_g, before_d = weights(model), weights(step.discs.main)
    before_aux = weights(step.discs.aux)
    losses = step(*batches())
    assert {"loss_seg_src_main", "loss_adv_trg_main", "loss_d_main", "loss_d_aux"} <= set(losses)
    assert any(
        not torch.equal(v, model.state_dict()[k])
        for k, v in before_g.items()
        if v.is_floating_point()
    )
    assert any(not torch.equal(v, step.discs.main.state_dict()[k]) for k, v in before_d.items())
    assert any(not torch.equal(v, step.discs.aux.state_dict()[k]) for k, v in before_aux.items())


def test_advent_with_zero_adversarial_weight_equals_source_only():
    # The target side may only reach the network through the weighted adversarial term
    # (with BatchNorm frozen: otherwise target batches move its running statistics).
    src, trg = batches()
    a, b = fresh_model(), fresh_model()
    set_batchnorm(a, "frozen")
    set_batchnorm(b, "frozen")
    AdaptationStep(a, cfg(lambda_adv_main=0.0, lambda_adv_aux=0.0), 8)(src, trg)
    AdaptationStep(b, cfg(method="source_only"), 8)(src, None)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_adversarial_term_changes_the_network_update():
    src, trg = batches()
    a, b = fresh_model(), fresh_model()
    set_batchnorm(a, "frozen")  # so that only parameters can differ, not running statistics
    set_batchnorm(b, "frozen")
    AdaptationStep(a, cfg(lambda_adv_main=1.0), 8)(src, trg)
    AdaptationStep(b, cfg(method="source_only"), 8)(src, None)
    params_b = dict(b.named_parameters())
    assert any(not torch.equal(p, params_b[k]) for k, p in a.named_parameters())


def self_info_main(model, images):
    _, main = model(images)
    return self_information(
        torch.softmax(upsample(main, tuple(images.shape[-2:]), model.align_corners), 1)
    )


def descends(params_before, params_after, objective) -> bool:
    """Whether the update params_before -> params_after points down `objective`'s gradient
    (a first-order test: true for any small enough step that lowers the objective)."""
    grads = torch.autograd.grad(objective(), params_before, allow_unused=True)
    change = [
        after.detach() - before.detach()
        for before, after in zip(params_before, params_after, strict=True)
    ]
    pairs = zip(grads, change, strict=True)
    return sum(float((g * d).sum()) for g, d in pairs if g is not None) < 0


def test_network_moves_target_maps_toward_source_and_discriminator_learns_domains():
    # Source labels all ignored and the aux term off: the network's only loss is the main
    # adversarial term, so its SGD update must descend "discriminator says source".
    src, trg = batches()
    src = {**src, "label": torch.full_like(src["label"], 255)}
    model = fresh_model()
    set_batchnorm(model, "frozen")
    settings = cfg(
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        lr=1e-2,
        lambda_adv_main=1.0,
        lambda_adv_aux=0.0,
    )
    step = AdaptationStep(model, settings, 8)
    model_before, disc_before = copy.deepcopy(model), copy.deepcopy(step.discs.main)
    with torch.no_grad():
        src_map = self_info_main(model_before, src["image"])
        trg_map = self_info_main(model_before, trg["image"])
    step(src, trg)

    def fooled():
        return adversarial_loss(
            disc_before(self_info_main(model_before, trg["image"])), SOURCE_LABEL
        )

    trainable = [p for p in model_before.parameters() if p.requires_grad]
    after = dict(model.named_parameters())
    moved = [after[n] for n, p in model_before.named_parameters() if p.requires_grad]
    assert descends(trainable, moved, fooled)

    def domain_loss():  # source maps are 0, target maps 1
        return adversarial_loss(disc_before(src_map), SOURCE_LABEL) + adversarial_loss(
            disc_before(trg_map), TARGET_LABEL
        )

    for p in disc_before.parameters():
        p.requires_grad_(True)
    assert descends(list(disc_before.parameters()), list(step.discs.main.parameters()), domain_loss)


def test_minent_lowers_target_entropy():
    src, trg = batches()
    model = fresh_model()
    set_batchnorm(model, "frozen")
    step = AdaptationStep(
        model,
        cfg(method="minent", lr=1e-2, lambda_seg_aux=0.0, lambda_ent_main=10.0, lambda_ent_aux=0.0),
        8,
    )

    def target_entropy():
        with torch.no_grad():
            return float(image_entropy(torch.softmax(model(trg["image"])[1], 1)).mean())

    start = target_entropy()
    src_no_labels = {**src, "label": torch.full_like(src["label"], 255)}  # entropy term only
    for _ in range(5):
        step(src_no_labels, trg)
    assert target_entropy() < start - 0.01


def test_frozen_batchnorm_keeps_running_statistics():
    model = fresh_model()
    set_batchnorm(model, "frozen")
    bn = model.stem[0][1]
    mean_before = bn.running_mean.clone()
    AdaptationStep(model, cfg(method="source_only"), 8)(batches()[0], None)
    assert torch.equal(bn.running_mean, mean_before)
    assert not bn.weight.requires_grad

    unfrozen = fresh_model()
    AdaptationStep(unfrozen, cfg(method="source_only"), 8)(batches()[0], None)
    assert not torch.equal(unfrozen.stem[0][1].running_mean, mean_before)


def sgd_steps(optimizer, p, grads):
    values = []
    for grad in grads:
        p.grad = torch.full_like(p, grad)
        optimizer.step()
        values.append(p.item())
    return values


def test_listed_sgd_applies_one_momentum_update_per_listing():
    # Listed twice, lr 0.1, momentum 0.5, gradient 1 at both steps. Step 1: buffer 1,
    # p = 0.9; buffer 0.5 * 1 + 1 = 1.5, p = 0.75. Step 2: buffer 1.75, p = 0.575;
    # buffer 1.875, p = 0.3875.
    p = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    optimizer = ListedSGD([{"params": [p, p]}], lr=0.1, momentum=0.5, weight_decay=0.0)
    assert sgd_steps(optimizer, p, [1.0, 1.0]) == pytest.approx([0.75, 0.3875])
    # Weight decay 0.1 accumulates in the gradient, as PyTorch <= 1.4 added it in place:
    # d = 1 + 0.1 * 1 = 1.1, buffer 1.1, p = 0.89; d = 1.1 + 0.1 * 0.89 = 1.189,
    # buffer 0.55 + 1.189 = 1.739, p = 0.89 - 0.1739 = 0.7161.
    p = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    optimizer = ListedSGD([{"params": [p, p]}], lr=0.1, momentum=0.5, weight_decay=0.1)
    assert sgd_steps(optimizer, p, [1.0]) == pytest.approx([0.7161])
    assert optimizer.param_groups[0]["repeats"] == [2]


def test_listed_once_is_pytorchs_sgd_bit_for_bit():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(50))
    b = torch.nn.Parameter(a.detach().clone())
    ours = ListedSGD([{"params": [a]}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    reference = torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        grad = torch.randn(50)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    assert torch.equal(a, b)


def test_param_listing_picks_the_optimizer_and_its_lists():
    model = fresh_model()
    unique = make_optimizer(model, cfg(optimizer="sgd"))
    assert type(unique) is torch.optim.SGD
    listed = make_optimizer(model, cfg(optimizer="sgd", param_listing="released"))
    assert isinstance(listed, ListedSGD)
    (group,) = listed.param_groups
    # The small network's trunk as the released code lists DeepLab-v2's: a block's
    # convolution sits in layer3, its block and its conv_bn_relu: 4 listings.
    repeats = dict(zip(map(id, group["params"]), group["repeats"], strict=True))
    assert repeats[id(model.layer3[0].conv1[0].weight)] == 4
    assert repeats[id(model.main_head.branches[0].weight)] == 1
    assert len(group["params"]) == len(unique.param_groups[0]["params"])


def test_released_batchnorm_normalises_batches_and_drifts_its_statistics():
    model = fresh_model()
    set_batchnorm(model, "released")
    bn = model.stem[0][1]
    assert bn.training and not bn.weight.requires_grad
    mean, weight = bn.running_mean.clone(), bn.weight.clone()
    src, trg = batches()
    AdaptationStep(model, cfg(lambda_adv_main=0.0, lambda_adv_aux=0.0), 8)(src, trg)
    assert torch.equal(bn.weight, weight) and not torch.equal(bn.running_mean, mean)
    # The target forward moved the statistics too: a source-only step moves them less.
    source_only = fresh_model()
    set_batchnorm(source_only, "released")
    AdaptationStep(source_only, cfg(method="source_only"), 8)(src, None)
    assert not torch.equal(source_only.stem[0][1].running_mean, bn.running_mean)
    set_batchnorm(model, "train")
    assert bn.training and bn.weight.requires_grad


# --- PyTorch 0.4.1's Adam (adam: released) -----------------------------------------------


def adam_steps(optimizer, p, grads):
    values = []
    for grad in grads:
        p.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        values.append(p.item())
    return values


def test_released_adam_adds_eps_before_the_bias_correction():
    # lr 1, betas (0.9, 0.99), eps 1e-8, p = 0, gradient 1e-7 (of eps's order).
    # Step 1: m = 0.1 * 1e-7 = 1e-8, v = 0.01 * 1e-14 = 1e-16, sqrt(v) = 1e-8;
    # released: sqrt(1 - 0.99) / (1 - 0.9) = 1, p = -1e-8 / (1e-8 + 1e-8) = -0.5;
    # PyTorch >= 1.3: p = -(1 / 0.1) * 1e-8 / (1e-8 / 0.1 + 1e-8) = -10 / 11.
    # Step 2 (same gradient): m = 0.9e-8 + 1e-8 = 1.9e-8, v = 0.99e-16 + 1e-16 = 1.99e-16;
    # released: p -= sqrt(0.0199) / 0.19 * 1.9e-8 / (sqrt(1.99e-16) + 1e-8).
    p = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
    released = ReleasedAdam([p], lr=1.0, betas=(0.9, 0.99))
    step2 = 0.0199**0.5 / 0.19 * 1.9e-8 / (1.99e-16**0.5 + 1e-8)
    assert adam_steps(released, p, [1e-7, 1e-7]) == pytest.approx([-0.5, -0.5 - step2], rel=1e-9)
    q = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
    current = torch.optim.Adam([q], lr=1.0, betas=(0.9, 0.99))
    assert adam_steps(current, q, [1e-7]) == pytest.approx([-10 / 11], rel=1e-9)
    # A gradient far above eps: both move by lr at the first step (m / sqrt(v) = 1).
    r = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
    assert adam_steps(ReleasedAdam([r], lr=1.0), r, [2.0]) == pytest.approx([-1.0], rel=1e-6)


def test_released_adam_weight_decay_and_resume():
    # Weight decay 0.5 is L2 added into the gradient: p = 2, gradient 0 -> 1 at step 1,
    # m = 0.1, v = 0.001 (betas 0.9, 0.999), p = 2 - 0.1 * sqrt(0.001) / 0.1 * 0.1 /
    # (sqrt(0.001) + 1e-8).
    p = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    optimizer = ReleasedAdam([p], lr=0.1, weight_decay=0.5)
    expected = 2 - 0.1 * 0.001**0.5 / 0.1 * 0.1 / (0.001**0.5 + 1e-8)
    assert adam_steps(optimizer, p, [0.0]) == pytest.approx([expected], rel=1e-9)
    # Its state round-trips through state_dict (checkpoints resume it).
    q = torch.nn.Parameter(p.detach().clone())
    resumed = ReleasedAdam([q], lr=0.1, weight_decay=0.5)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as saved and loaded
    assert adam_steps(optimizer, p, [0.3]) == adam_steps(resumed, q, [0.3])


def test_adam_switch_picks_the_arithmetic_of_every_adam():
    for name, kind in (("released", ReleasedAdam), ("current", torch.optim.Adam)):
        step = AdaptationStep(fresh_model(), cfg(adam=name), 8)  # optimizer: adam
        assert type(step.optimizer) is kind and type(step.discs.optimizer) is kind


# --- AdaptSegNet (method: adaptsegnet) ----------------------------------------------------


def discriminator_inputs(step):
    """Record what the main discriminator is fed."""
    seen = []
    step.discs.main.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    return seen


@pytest.mark.parametrize("method", ["adaptsegnet", "advent"])
def test_adaptsegnet_discriminators_see_softmax_maps_advent_entropy_maps(method):
    src, trg = batches()
    model = fresh_model()
    set_batchnorm(model, "frozen")
    step = AdaptationStep(model, cfg(method=method, gan="vanilla"), 8)
    before = copy.deepcopy(model)
    seen = discriminator_inputs(step)
    step(src, trg)
    # Adversarial term on target, then the domain step on source and target maps.
    assert len(seen) == 3
    with torch.no_grad():
        _, main = before(trg["image"])
        prob = torch.softmax(upsample(main, (32, 64), model.align_corners), 1)
    expected = prob if method == "adaptsegnet" else self_information(prob)
    assert torch.allclose(seen[0], expected, atol=1e-6)
    if method == "adaptsegnet":
        assert torch.allclose(seen[1].sum(1), torch.ones(2, 32, 64), atol=1e-5)


@pytest.mark.parametrize("gan", ["vanilla", "ls"])
def test_adaptsegnet_gan_objective_for_both_players(gan):
    # The discriminators' loss and the network's adversarial term, from the maps and
    # the discriminator before the step: BCE on logits, or (ls) the mean squared error
    # of the raw outputs to the label, each domain's loss halved.
    src, trg = batches()
    model = fresh_model()
    set_batchnorm(model, "frozen")
    step = AdaptationStep(model, cfg(method="adaptsegnet", gan=gan), 8)
    model_before, disc = copy.deepcopy(model), copy.deepcopy(step.discs.main)
    losses = step(src, trg)

    def objective(out, label):
        if gan == "ls":
            return ((out - label) ** 2).mean()
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out, torch.full_like(out, label)
        )

    with torch.no_grad():
        d_out = [
            disc(torch.softmax(upsample(model_before(x["image"])[1], (32, 64), False), 1))
            for x in (src, trg)
        ]
    assert losses["loss_adv_trg_main"] == pytest.approx(float(objective(d_out[1], 0.0)), 1e-5)
    expected = (objective(d_out[0], 0.0) + objective(d_out[1], 1.0)) / 2
    assert losses["loss_d_main"] == pytest.approx(float(expected), rel=1e-5)


# --- the source-like side's weight (lambda_seg) -------------------------------------------


def test_lambda_seg_zero_trains_on_the_target_side_term_alone():
    # lambda_seg 0 with real labels steps as lambda_seg 1 with every label ignored: the
    # pseudo-labels' cross-entropy is gone, the easy maps still feed the discriminators.
    src, trg = batches()
    a, b = fresh_model(), fresh_model()
    set_batchnorm(a, "frozen")
    set_batchnorm(b, "frozen")
    torch.manual_seed(1)  # the same discriminators for both
    losses = AdaptationStep(a, cfg(lambda_seg=0.0, lambda_adv_main=1.0), 8)(src, trg)
    unlabelled = {**src, "label": torch.full_like(src["label"], 255)}
    torch.manual_seed(1)
    AdaptationStep(b, cfg(lambda_seg=1.0, lambda_adv_main=1.0), 8)(unlabelled, trg)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert losses["loss_seg_src_main"] > 0  # still measured and logged


def test_lambda_seg_scales_the_source_gradient():
    src, _ = batches()
    moves = []
    for weight in (1.0, 2.0):
        model = fresh_model()
        set_batchnorm(model, "frozen")
        before = weights(model)
        settings = cfg(
            method="source_only", optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0
        )
        AdaptationStep(model, dataclasses.replace(settings, lambda_seg=weight), 8)(src, None)
        moves.append({k: model.state_dict()[k] - v for k, v in before.items()})
    key = "main_head.branches.0.weight"
    assert torch.allclose(moves[1][key], 2 * moves[0][key], rtol=1e-4, atol=1e-7)
    assert moves[0][key].abs().max() > 1e-4


def test_an_adaptsegnet_step_with_released_adam_resumes_from_a_saved_snapshot(tmp_path):
    # The checkpoint round trip of train(): snapshot, torch.save, weights_only load,
    # restore; the next step is then the uninterrupted run's, bit for bit.
    from intrada.training import restore, snapshot
    from intrada.validation import Selection

    settings = cfg(method="adaptsegnet", gan="ls", adam="released")
    data = [batches(seed) for seed in range(3)]
    model = fresh_model()
    set_batchnorm(model, settings.batchnorm)
    step = AdaptationStep(model, settings, 8)
    for it in range(2):
        step.set_iteration(it)
        step(*data[it])
    path = tmp_path / "checkpoint.pt"
    torch.save(snapshot(step, 2, {}, [], Selection("last", 0)), path)
    resumed_model = fresh_model(seed=1)  # other weights: all must come from the file
    set_batchnorm(resumed_model, settings.batchnorm)
    resumed = AdaptationStep(resumed_model, settings, 8)
    restore(resumed, torch.load(path, weights_only=True), Selection("last", 0))
    for s in (step, resumed):
        s.set_iteration(2)
        s(*data[2])
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert isinstance(resumed.discs.optimizer, ReleasedAdam)
    for key, value in step.discs.main.state_dict().items():
        assert torch.equal(value, resumed.discs.main.state_dict()[key]), key
