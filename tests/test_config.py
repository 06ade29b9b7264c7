import pytest
import yaml

from intrada.config import ParamsError, check_all, get, read_params
from tests.conftest import REPO, write_params
from tests.real_layouts import cityscapes_target


def check(tmp_path, params):
    check_all(read_params(write_params(tmp_path, params)))


def test_repository_params_are_valid():
    check_all(read_params(REPO / "params.yaml"))


@pytest.mark.parametrize("value", [1.5, 0, 1.01, -0.2, "half"])
def test_lambda_outside_zero_one_names_lambda(tmp_path, params, value):
    params["lambda"] = value
    with pytest.raises(ParamsError, match=r"lambda = .* expected") as info:
        check(tmp_path, params)
    assert "\n" not in str(info.value)


def test_lambda_one_is_the_self_training_control_and_is_accepted(tmp_path, params):
    params["lambda"] = 1.0
    check(tmp_path, params)


def test_unknown_rare_class_names_the_key_and_the_dataset_classes(tmp_path, params):
    params["inference"]["rare_classes"] = ["pole", "traffic light"]
    with pytest.raises(ParamsError, match=r"inference.rare_classes = .* class names of dataset"):
        check(tmp_path, params)


def test_normalisation_without_rare_classes_is_refused(tmp_path, params):
    params["inference"].update(normalize_entropy=True, rare_classes=[])
    with pytest.raises(ParamsError, match="inference.rare_classes = \\[\\] is invalid"):
        check(tmp_path, params)


@pytest.mark.parametrize("value", [-0.1, 1.0, 2])
def test_confidence_threshold_outside_zero_one_is_refused(tmp_path, params, value):
    params["pseudo_labels"]["confidence_threshold"] = value
    with pytest.raises(ParamsError, match="pseudo_labels.confidence_threshold"):
        check(tmp_path, params)


def test_lambda_that_leaves_a_split_empty_is_refused(tmp_path, params):
    params["lambda"] = 0.05  # int(10 * 0.05) = 0 easy images
    with pytest.raises(ParamsError, match="lambda.*both splits non-empty"):
        check(tmp_path, params)


def test_unknown_top_level_key_suggests_the_known_one(tmp_path, params):
    params["lamda"] = params.pop("lambda")
    with pytest.raises(ParamsError, match=r"unknown key lamda \(did you mean lambda\?\)"):
        check(tmp_path, params)


def test_unknown_nested_key_is_named_with_its_section(tmp_path, params):
    params["inter"]["iteration"] = 3
    with pytest.raises(ParamsError, match=r"unknown key inter\.iteration"):
        check(tmp_path, params)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "name", "resnet", r"model\.name = 'resnet' .* one of small, deeplabv2"),
        ("inter", "method", "fda", r"inter\.method = 'fda' .* one of source_only, advent, minent"),
        ("generate.synthetic", "num_source", 0, r"generate\.synthetic\.num_source = 0 .* positive"),
        ("generate.synthetic", "num_target_val", -3, r"generate\.synthetic\.num_target_val = -3"),
        (
            "data",
            "name",
            "cityscapes",
            r"data\.name = 'cityscapes' .* one of synthetic, gta5, synthia",
        ),
        ("data", "target_size", [64], r"data\.target_size = \[64\] .* \[width, height\]"),
        (
            "data",
            "source_root",
            "elsewhere",
            r"data\.source_root = 'elsewhere' .* data/synthetic/source",
        ),
        ("data", "verify", "maybe", r"data\.verify = 'maybe' .* one of header, decode"),
        (
            "inter",
            "schedule_iterations",
            2,
            r"inter\.schedule_iterations = 2 .* at least inter\.iterations",
        ),
        ("intra", "iterations", 0, r"intra\.iterations = 0 .* positive"),
        ("source_only", "batch_size", 2.5, r"source_only\.batch_size = 2\.5 .* an integer"),
        (
            "inter",
            "init",
            "inter",
            r"inter\.init = 'inter' .* one of scratch, pretrained, source_only",
        ),
        (
            "inter",
            "init",
            "pretrained",
            r"inter\.init = 'pretrained' .* small has no ImageNet weights",
        ),
        ("source_only", "method", "advent", r"source_only\.method = 'advent'"),
        ("inter", "batchnorm", "yes please", r"inter\.batchnorm .* one of train, frozen, released"),
        ("data", "size_mismatch", "shrink", r"data\.size_mismatch .* one of stop, drop, resize"),
        ("model", "align_corners", "yes", r"model\.align_corners = 'yes' .* true or false"),
        ("intra", "eval_every", -1, r"intra\.eval_every = -1 .* >= 0"),
        (
            "inter",
            "param_listing",
            "released",
            r"inter\.param_listing = 'released' .* unique with optimizer adam",
        ),
        ("generate.synthetic", "height", 30, r"generate\.synthetic\.height = 30 .* multiple of 8"),
        ("figures", "gallery_k", -1, r"figures\.gallery_k = -1 .* >= 0"),
        ("figures", "tile_width", 8, r"figures\.tile_width = 8 .* at least 16"),
        ("figures", "score_bins", 0, r"figures\.score_bins = 0 .* positive"),
        ("inter", "lambda_seg", -1, r"inter\.lambda_seg = -1\.0 .* >= 0"),
        (
            "source_only",
            "lambda_seg",
            0,
            r"source_only\.lambda_seg = 0\.0 .* positive number with method source_only",
        ),
        ("intra", "adam", "0.4.1", r"intra\.adam = '0\.4\.1' .* one of current, released"),
        ("inter", "gan", "wgan", r"inter\.gan = 'wgan' .* one of vanilla, ls"),
        ("model", "aspp_branches", 2, r"model\.aspp_branches = 2 .* no value for model small"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(
    tmp_path, params, section, key, value, message
):
    node = params
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ParamsError, match=message) as info:
        check(tmp_path, params)
    assert "\n" not in str(info.value)


def test_method_keys_are_required_only_for_the_method_in_use(tmp_path, params):
    del params["inter"]["lr_disc"]
    with pytest.raises(ParamsError, match=r"inter\.lr_disc is missing: method advent needs it"):
        check(tmp_path, params)
    params["inter"]["method"] = "minent"
    check(tmp_path, params)  # MinEnt has no discriminator


def test_discriminator_deeper_than_the_images_allow_is_refused(tmp_path, params):
    params["intra"]["disc_channels"] = [4, 8, 16, 32, 64]  # 6 halvings of 32x64 images
    with pytest.raises(ParamsError, match=r"intra\.disc_channels .* at most 4 widths for 32x64"):
        check(tmp_path, params)
    params["intra"]["method"] = "minent"  # no discriminator, no constraint
    check(tmp_path, params)


def test_frozen_batchnorm_needs_a_trained_start_point(tmp_path, params):
    params["inter"]["init"] = "scratch"
    with pytest.raises(ParamsError, match=r"inter\.batchnorm = 'frozen' .* when init is scratch"):
        check(tmp_path, params)
    params["inter"]["batchnorm"] = "released"
    check(tmp_path, params)


def test_best_val_selection_needs_validation(tmp_path, params):
    params["intra"].update(select="best_val", eval_every=0)
    with pytest.raises(ParamsError, match=r"intra\.select = 'best_val' .* intra\.eval_every is 0"):
        check(tmp_path, params)
    params["intra"]["eval_every"] = 10
    check(tmp_path, params)


def test_the_released_listing_is_an_sgd_setting(tmp_path, params):
    params["inter"].update(optimizer="sgd", param_listing="released")
    check(tmp_path, params)


def test_missing_key_is_named(tmp_path, params):
    del params["evaluate"]["num_panels"]
    with pytest.raises(ParamsError, match=r"evaluate\.num_panels is missing"):
        check(tmp_path, params)


def test_exponent_floats_written_by_dvc_are_numbers(tmp_path, params):
    # DVC writes `-S inter.lr=1e-4` as 1e-4, which YAML 1.1 (PyYAML) reads as a string.
    path = write_params(tmp_path, params)
    path.write_text(path.read_text().replace("lr: 0.0001", "lr: 1e-4"))
    raw = read_params(path)
    assert raw["inter"]["lr"] == "1e-4"
    assert get(raw, "inter").lr == pytest.approx(1e-4)


def test_sections_parse_into_typed_objects():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    inter = get(raw, "inter")
    assert inter.disc_channels == tuple(raw["inter"]["disc_channels"])
    assert isinstance(inter.lr, float) and isinstance(inter.iterations, int)
    assert get(raw, "lambda") == raw["lambda"]


def test_a_real_dataset_needs_its_roots_on_disk(tmp_path, params):
    params["data"].update(name="gta5", source_root=str(tmp_path / "GTA5"))
    params["generate"] = {}
    params["inference"]["rare_classes"] = ["pole", "person"]
    with pytest.raises(ParamsError, match=r"data\.source_root = '.*GTA5' .* existing folder"):
        check(tmp_path, params)
    (tmp_path / "GTA5").mkdir()
    params["data"].update(cityscapes_target(tmp_path / "GTA5"))
    check(tmp_path, params)


def test_generate_must_match_the_dataset(tmp_path, params):
    params["data"].update(name="gta5", source_root=str(tmp_path), target_root=str(tmp_path))
    with pytest.raises(ParamsError, match=r"generate = .* \{\} when data.name is gta5"):
        check(tmp_path, params)
    params["data"].update(name="synthetic", source_root="data/synthetic/source")
    params["data"]["target_root"] = "data/synthetic/target"
    params["generate"] = {}
    with pytest.raises(ParamsError, match=r"generate\.synthetic is missing"):
        check(tmp_path, params)


def test_pretrained_init_needs_the_weights_file(tmp_path, params):
    params["model"] = {"name": "deeplabv2", "weights_format": "torchvision", "align_corners": True}
    params["intra"]["init"] = "pretrained"
    with pytest.raises(ParamsError, match=r"model\.pretrained is missing"):
        check(tmp_path, params)
    # The placeholder (the params stamp) names no weights file.
    params["model"]["pretrained"] = "data/params.ok"
    with pytest.raises(ParamsError, match=r"model\.pretrained = .* weights file: intra\.init"):
        check(tmp_path, params)
    params["model"]["pretrained"] = str(tmp_path / "resnet101.pth")
    with pytest.raises(ParamsError, match=r"model\.pretrained = .* an existing"):
        check(tmp_path, params)
    (tmp_path / "resnet101.pth").write_bytes(b"")
    check(tmp_path, params)


def test_the_imagenet_file_is_a_dependency_so_it_must_exist_even_when_unused(tmp_path, params):
    params["model"]["pretrained"] = str(tmp_path / "gone.pth")  # no init: pretrained
    with pytest.raises(ParamsError, match=r"model\.pretrained = .* data/params.ok when no"):
        check(tmp_path, params)


@pytest.mark.parametrize("section", ["source_only", "inter", "intra"])
def test_init_file_starts_from_an_existing_file_and_alone_allows_zero_iterations(
    tmp_path, params, section
):
    params[section]["iterations"] = 0
    with pytest.raises(ParamsError, match=rf"{section}\.iterations = 0 .* 0 only with"):
        check(tmp_path, params)
    params[section]["init"] = "file"
    # The placeholder (the params stamp) names no file to start from.
    with pytest.raises(ParamsError, match=rf"{section}\.init_file = 'data/params.ok' .* the model"):
        check(tmp_path, params)
    params[section]["init_file"] = str(tmp_path / "released.pth")
    with pytest.raises(ParamsError, match=rf"{section}\.init_file = .* an existing model file"):
        check(tmp_path, params)
    (tmp_path / "released.pth").write_bytes(b"")
    check(tmp_path, params)


def test_an_init_file_is_a_dependency_so_it_must_exist_even_when_unused(tmp_path, params):
    params["inter"]["init_file"] = str(tmp_path / "gone.pth")  # inter.init: source_only
    with pytest.raises(ParamsError, match=r"inter\.init_file = .* data/params.ok when inter"):
        check(tmp_path, params)


def test_adaptsegnet_needs_its_gan_objective_and_a_discriminator_that_fits(tmp_path, params):
    params["inter"]["method"] = "adaptsegnet"
    check(tmp_path, params)
    del params["inter"]["gan"]
    with pytest.raises(ParamsError, match=r"inter\.gan is missing: method adaptsegnet needs it"):
        check(tmp_path, params)
    params["inter"]["gan"] = "ls"
    params["inter"]["disc_channels"] = [4, 8, 16, 32, 64]  # 6 halvings of 32x64 images
    with pytest.raises(ParamsError, match=r"inter\.disc_channels .* at most 4 widths"):
        check(tmp_path, params)


def test_a_zero_pseudo_label_weight_needs_a_hard_split(tmp_path, params):
    params["intra"]["lambda_seg"] = 0.0  # the intra step's adversarial term alone
    check(tmp_path, params)
    params["lambda"] = 1.0  # self-training: train_intra drops the target side
    with pytest.raises(ParamsError, match=r"intra\.lambda_seg = 0\.0 .* when lambda is 1"):
        check(tmp_path, params)


@pytest.mark.parametrize("value", [0, 5])
def test_aspp_branches_count_the_four_deeplab_branches(tmp_path, params, value):
    params["model"] = {"name": "deeplabv2", "weights_format": "deeplab", "align_corners": True}
    params["model"]["pretrained"] = "data/params.ok"
    params["model"]["aspp_branches"] = 2  # the released AdaptSegNet network
    check(tmp_path, params)
    params["model"]["aspp_branches"] = value
    with pytest.raises(ParamsError, match=rf"model\.aspp_branches = {value} .* from 1 to 4"):
        check(tmp_path, params)
