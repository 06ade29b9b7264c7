import pytest
import torch

from intrada.checkpoint import load_model, model_meta, save_model
from intrada.classes import class_set, dataset_classes
from intrada.errors import IntradaError
from intrada.models import EntropyDiscriminator, build_model


def test_small_network_returns_aux_and_main_scores_at_quarter_resolution():
    model = build_model("small", 8, width=4)
    aux, main = model(torch.rand(2, 3, 32, 64))
    assert aux.shape == main.shape == (2, 8, 8, 16)


def test_small_network_is_invariant_to_image_brightness_and_contrast():
    # Per-image standardisation: a darker, lower-contrast copy gives the same scores.
    model = build_model("small", 8, width=4).eval()
    image = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        _, a = model(image)
        _, b = model(0.1 + 0.5 * image)
    assert torch.allclose(a, b, atol=1e-3)


def test_discriminator_halves_the_size_per_layer():
    disc = EntropyDiscriminator(8, (4, 8, 16))
    assert disc(torch.rand(2, 8, 32, 64)).shape == (2, 1, 2, 4)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", 8)


def save_small(path, classes=None):
    classes = classes or dataset_classes("synthetic")
    model = build_model("small", len(classes), width=4)
    meta = model_meta(
        arch="small",
        arch_config={"width": 4},
        classes=classes,
        stage="inter",
        params={"seed": 0},
        init_from=None,
    )
    save_model(path, model, meta)
    return model


def test_model_file_round_trips_with_provenance(tmp_path):
    model = save_small(tmp_path / "model.pt")
    loaded, meta = load_model(tmp_path / "model.pt", dataset_classes("synthetic"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert meta["arch"] == "small" and meta["arch_config"] == {"width": 4}
    assert meta["class_names"][0] == "road" and meta["train_ids"][-1] == 13
    assert meta["params"] == {"seed": 0} and len(meta["params_sha256"]) == 64
    assert {"torch", "numpy", "python", "intrada"} <= set(meta["versions"])
    assert set(meta["git"]) == {"commit", "code_modified"}


def test_model_of_other_classes_is_refused(tmp_path):
    save_small(tmp_path / "model.pt", class_set(["road", "sky"]))
    with pytest.raises(IntradaError, match="model predicts classes"):
        load_model(tmp_path / "model.pt", dataset_classes("synthetic"))


def test_unreadable_model_file_is_named(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IntradaError, match="model.pt: not a readable model file"):
        load_model(tmp_path / "model.pt")


def test_recorded_commit_is_the_last_one_that_changed_pipeline_code(tmp_path):
    import subprocess

    from intrada.checkpoint import git_revision

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout.strip()

    assert git_revision(tmp_path) == {"commit": None, "code_modified": None}  # not a repo
    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "intrada").mkdir()
    (tmp_path / "intrada" / "a.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "code")
    code_commit = git("rev-parse", "HEAD")
    (tmp_path / "README.md").write_text("results\n")
    git("add", "-A")
    git("commit", "-qm", "docs")
    assert git_revision(tmp_path) == {"commit": code_commit, "code_modified": False}
    (tmp_path / "intrada" / "a.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == {"commit": code_commit, "code_modified": True}


def test_align_corners_travels_with_the_model_file_to_every_prediction(tmp_path):
    # Scoring, pseudo-labels, validation and evaluation all go through predict_probs:
    # each upsamples as the architecture stored in the model file says.
    import torch.nn.functional as F

    from intrada.inference import predict_probs

    classes = dataset_classes("synthetic")
    image, size = torch.rand(1, 3, 32, 64), (37, 71)
    probs = {}
    for align in (False, True):
        torch.manual_seed(0)
        model = build_model("small", len(classes), width=4, align_corners=align)
        meta = model_meta(
            arch="small",
            arch_config={"width": 4, "align_corners": align},
            classes=classes,
            stage="inter",
            params={},
            init_from=None,
        )
        save_model(tmp_path / "model.pt", model, meta)
        loaded, _ = load_model(tmp_path / "model.pt", classes)
        assert loaded.align_corners is align
        probs[align] = predict_probs(loaded, image, size)
        with torch.no_grad():
            main = loaded(image)[1]
        expected = F.interpolate(main, size=size, mode="bilinear", align_corners=align)
        assert torch.allclose(probs[align], torch.softmax(expected, 1))
    assert not torch.allclose(probs[False], probs[True])
