"""Class tables: the built-in tables and a user's file are the same thing, map labels the
same way, and a bad file is refused in one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from intrada.classes import (
    CITYSCAPES_ID,
    SYNTHIA_ID,
    TRAIN_ID,
    ClassSet,
    builtin_table,
    dataset_classes,
    parse_class_table,
    read_class_table,
    table_yaml,
)
from intrada.errors import IntradaError
from intrada.io import read_label
from tests.conftest import REPO
from tests.real_layouts import (
    OWN_TABLE,
    SYNTHIA_IDS,
    id_pattern,
    save,
    write_synthia_label,
)


def own_table(tmp_path, text: str = OWN_TABLE) -> ClassSet:
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    return ClassSet.from_table(read_class_table(path))


def test_builtin_sets_are_the_cityscapes_classes_of_each_source():
    gta5, synscapes = dataset_classes("gta5"), dataset_classes("synscapes")
    assert len(gta5) == 19 and synscapes.train_ids == gta5.train_ids == tuple(range(19))
    assert (synscapes.names, synscapes.colors) == (gta5.names, gta5.colors)
    assert dataset_classes("synthia").subsets["mIoU_13"][:3] == ("road", "sidewalk", "building")
    assert dataset_classes("gta5").subsets == {}


@pytest.mark.parametrize("dataset", ["gta5", "synthia", "synthetic"])
def test_a_builtin_table_written_to_a_file_maps_labels_as_the_builtin_encodings(tmp_path, dataset):
    """The file format can say everything the built-in tables say: the same classes,
    colours and subsets, and every label value to the same class (or ignored)."""
    path = tmp_path / "classes.yaml"
    path.write_text(table_yaml(builtin_table(dataset)))
    builtin, own = dataset_classes(dataset), ClassSet.from_table(read_class_table(path))
    assert (own.names, own.colors, own.subsets) == (builtin.names, builtin.colors, builtin.subsets)
    assert own.train_ids == tuple(range(len(own)))  # a file's classes are numbered in order
    if dataset == "synthia":
        source = write_synthia_label(tmp_path / "s.png", id_pattern(list(range(23)), 46, 4))
        encoding = SYNTHIA_ID
    else:
        source = save(tmp_path / "s.png", id_pattern(list(range(34)), 68, 4).astype(np.uint8))
        encoding = CITYSCAPES_ID
    target = save(tmp_path / "t.png", id_pattern(list(range(34)), 68, 4).astype(np.uint8))
    for path, builtin_encoding, label_set in (
        (source, encoding, dataset),
        (target, CITYSCAPES_ID, "cityscapes"),
    ):
        expected = builtin.train_id_to_channel()[
            read_label(path, builtin_encoding, classes=builtin)
        ]
        got = own.train_id_to_channel()[read_label(path, f"table:{label_set}", classes=own)]
        assert np.array_equal(got, expected), label_set
        assert (expected != 255).any() and (expected == 255).any()


def test_a_users_table_maps_merged_classes_and_ignores_listed_values(tmp_path):
    classes = own_table(tmp_path)
    assert classes.names == ("road", "building", "vehicle")
    assert classes.colors[1] == (70, 70, 70)  # "#464646"
    assert classes.subsets == {"mIoU_stuff": ("road", "building")}
    label = save(tmp_path / "l.png", np.array([[7, 11, 26, 33, 0, 9, 30]], np.uint8))
    assert read_label(label, "table:gta5", classes=classes).tolist() == [
        [0, 1, 2, 2, 255, 255, 255]
    ]
    # Pseudo-labels and predictions of a user's table store its class numbers.
    ids = save(tmp_path / "ids.png", np.array([[0, 1, 2, 255]], np.uint8))
    assert read_label(ids, TRAIN_ID, classes=classes).tolist() == [[0, 1, 2, 255]]
    ids = save(tmp_path / "ids.png", np.array([[3]], np.uint8))
    with pytest.raises(IntradaError, match=r"label value 3 is out of range .* expected 0-2 or 255"):
        read_label(ids, TRAIN_ID, classes=classes)


def test_a_label_value_the_table_does_not_list_is_refused_in_one_line(tmp_path):
    classes = own_table(tmp_path)
    label = save(tmp_path / "l.png", np.array([[7, 34]], np.uint8))
    with pytest.raises(IntradaError) as info:
        read_label(label, "table:gta5", classes=classes)
    message = str(info.value)
    assert message.startswith(f"{label}: label value 34 is not in the class table ")
    assert "classes.yaml" in message and "ignore.gta5" in message and "\n" not in message


def test_the_users_own_labels_may_be_16_bit(tmp_path):
    text = OWN_TABLE.replace("target: [3]", "target: [3, 1000]")
    classes = own_table(tmp_path, text)
    label = tmp_path / "wide.png"
    from PIL import Image

    Image.fromarray(np.array([[1, 1000, 255, 2]], np.uint16)).save(label)
    assert read_label(label, "table:target", classes=classes).tolist() == [[0, 2, 255, 1]]
    Image.fromarray(np.array([[1, 999]], np.uint16)).save(label)
    with pytest.raises(IntradaError, match=r"label value 999 is not in the class table"):
        read_label(label, "table:target", classes=classes)


def test_a_synthia_source_column_reads_16_bit_synthia_labels(tmp_path):
    text = OWN_TABLE.replace("gta5: [7]", "synthia: [3]").replace("gta5: [11]", "synthia: [2]")
    text = text.replace("gta5: [26, 33]", "synthia: [8, 11]").replace(
        'gta5: ["0-6", "8-10", "12-25", "27-32"]', 'synthia: [0, 1, "4-7", 9, 10, "12-22"]'
    )
    classes = own_table(tmp_path, text)
    path = write_synthia_label(tmp_path / "s.png", id_pattern(list(SYNTHIA_IDS), 7, 2))
    ids = list(SYNTHIA_IDS)  # road 3, sky 1, pedestrian 10, wall 21, void 0, 16, 22
    assert read_label(path, "table:synthia", classes=classes)[0].tolist() == [
        0 if i == 3 else 255 for i in ids
    ]


BAD_TABLES = [
    ("- road", r"expected a mapping with a `classes` list"),
    ("name: road", r"unknown key 'name'; expected one of: classes, ignore, subsets"),
    ("classes: []", r"`classes` must be a list of 2 to 255 classes"),
    ("classes: [{name: a, color: [1, 2, 3], gta5: [1]}]", r"a list of 2 to 255"),
    (
        "classes: [{name: road, color: [1,2,3], gta5: [1]}, {name: road, color: [4,5,6]}]",
        r"classes\[1\] \(road\): the name is used twice",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1]}, {name: b, color: [4,5,6], gta5: [1]}]",
        r"classes\[1\] \(b\): gta5 value 1 already belongs to class 'a'",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1, 1]}, {name: b, color: [4,5,6], gta5: [2]}]",
        r"classes\[0\] \(a\): gta5: value 1 is listed twice",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1]}, {name: b, color: [4,5,6], gta5: [2]}]\n"
        "ignore: {gta5: ['0-2']}",
        r"ignore: gta5 value 1 belongs to class 'a'; expected a value either ignored or a class's",
    ),
    (
        "classes: [{name: a, color: [1,2,300], gta5: [1]}, {name: b, color: [4,5,6], gta5: [2]}]",
        r"classes\[0\] \(a\): color \[1, 2, 300\] is invalid; expected \[red, green, blue\]",
    ),
    (
        "classes: [{name: a, color: [1,2], gta5: [1]}, {name: b, color: [4,5,6], gta5: [2]}]",
        r"color \[1, 2\] is invalid",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1]}, {name: b, color: [1,2,3], gta5: [2]}]",
        r"classes\[1\] \(b\): color \[1, 2, 3\] is the colour of class 'a' too",
    ),
    (
        "classes: [{name: a, gta5: [1]}, {name: b, color: [1,2,3], gta5: [2]}]",
        r"classes\[0\] \(a\): color is missing",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta: [1]}, {name: b, color: [4,5,6], gta5: [2]}]",
        r"classes\[0\] \(a\): unknown key 'gta' \(did you mean gta5\?\)",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1]}, {name: b, color: [4,5,6], gta5: [2]}]\n"
        "ignored: {gta5: [0]}",
        r"unknown key 'ignored' \(did you mean ignore\?\)",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1]}, {name: b, color: [4,5,6], gta5: [2]}]\n"
        "ignore: {targets: [0]}",
        r"ignore: unknown key 'targets' \(did you mean target\?\)",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [256]}, {name: b, color: [4,5,6], gta5: [2]}]",
        r"gta5: value 256 is out of range; gta5 labels are 8-bit \(0-255\)",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [road]}, {name: b, color: [4,5,6], gta5: [2]}]",
        r"gta5: 'road' is not a label value; expected integers or \"a-b\" ranges",
    ),
    (
        "classes: [{name: a, color: [1,2,3], gta5: [1]}, {name: b, color: [4,5,6], gta5: [2]}]\n"
        "subsets: {mIoU_x: [a, c]}",
        r"subsets: mIoU_x names \['c'\], not classes of the table",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_TABLES)
def test_a_bad_class_table_is_refused_in_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(IntradaError, match=message) as info:
        read_class_table(path)
    assert str(info.value).startswith(f"{path.as_posix()}: ") and "\n" not in str(info.value)


def test_a_table_must_list_the_source_values_of_every_class():
    table = parse_class_table(yaml.safe_load(OWN_TABLE), "classes.yaml")
    table.require("gta5", every_class=True)
    with pytest.raises(IntradaError, match=r"lists no synthia values"):
        table.require("synthia", every_class=True)
    partial = OWN_TABLE.replace("    gta5: [26, 33]\n", "")
    with pytest.raises(IntradaError, match=r"class 'vehicle' has no gta5 values"):
        parse_class_table(yaml.safe_load(partial), "classes.yaml").require("gta5", True)


def test_the_command_prints_a_builtin_table_that_reads_back(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "intrada.classes", "synthia"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "classes.yaml").write_text(out)
    table = read_class_table(tmp_path / "classes.yaml")
    assert len(table.names) == 16 and dict(table.subsets)["mIoU_13"][0] == "road"
    assert dict(table.ignore)["synthia"] == (0, 13, 14, 16, 18, 20, 22)
    assert "29-31" in out  # runs of ignored Cityscapes ids are written as ranges


# The user documentation's example class table and params (docs/datasets.md, "Your own
# images": keep in step).
DOC = REPO / "docs" / "datasets.md"


def doc_blocks(language: str) -> list[str]:
    import re

    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_documented_class_table_and_params_are_valid(tmp_path, monkeypatch):
    from intrada.config import check_all, read_params
    from tests.conftest import write_params

    (table,) = [b for b in doc_blocks("yaml") if b.lstrip().startswith("#") and "classes:" in b]
    (data,) = [b for b in doc_blocks("yaml") if b.startswith("data:")]
    params = yaml.safe_load((REPO / "profiles" / "gta5_cityscapes.yaml").read_text())
    documented = yaml.safe_load(data)
    params["data"].update(documented["data"])
    params["inference"].update(documented["inference"])
    monkeypatch.chdir(tmp_path)
    for folder in ("data/raw/GTA5", "data/raw/mine/train", "data/raw/mine/val/images"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "data/raw/mine/val/labels").mkdir()
    (tmp_path / "data/raw/mine/classes.yaml").write_text(table)
    (tmp_path / params["model"]["pretrained"]).touch()
    check_all(read_params(write_params(tmp_path, params)))
    classes = read_class_table(tmp_path / "data/raw/mine/classes.yaml")
    # Every GTA5 label id (0-33) is a class's or ignored.
    gta5 = {v for values in classes.class_values("gta5") for v in values}
    assert gta5 | set(classes.ignored("gta5")) == set(range(34))
