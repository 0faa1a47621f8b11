"""Dataset catalog: Detectron's names and file layout, data-root resolution, user
registration (call and YAML), materialization errors, and the `detectron data` command."""
import json

import pytest
from pycocotools.coco import COCO

from detectron_lib.cli import main
from detectron_lib.data import catalog
from detectron_lib.data.catalog import (
    get_dataset,
    materialize_dataset,
    register_coco_dataset,
    register_datasets_from_yaml,
    resolve_data_root,
)
from detectron_lib.errors import DatasetError

DETECTRON_NAMES = [
    "coco_2014_train", "coco_2014_val", "coco_2014_minival", "coco_2014_valminusminival",
    "coco_2017_train", "coco_2017_val", "coco_2017_test", "coco_2017_test-dev",
    "keypoints_coco_2014_train", "keypoints_coco_2014_val", "keypoints_coco_2014_minival",
    "keypoints_coco_2014_valminusminival", "keypoints_coco_2017_train",
    "keypoints_coco_2017_val", "voc_2007_train", "voc_2007_val", "voc_2007_trainval",
    "voc_2007_test", "voc_2012_train", "voc_2012_val", "voc_2012_trainval",
    "cityscapes_fine_instanceonly_seg_train", "cityscapes_fine_instanceonly_seg_val",
    "cityscapes_fine_instanceonly_seg_test", "shapes_train", "shapes_val", "shapes_kp_train",
    "shapes_kp_val",
]


@pytest.fixture
def clean_catalog(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(catalog, "_CATALOG", dict(catalog._CATALOG))


def test_all_detectron_names_present_with_detectron_layout(tmp_path):
    assert set(DETECTRON_NAMES) <= set(catalog.dataset_names())
    # Relative layout of Detectron's dataset_catalog.py.
    entry = get_dataset("coco_2014_minival")
    assert entry.annotation_path(tmp_path) == tmp_path / "coco/annotations/instances_minival2014.json"
    assert entry.image_path(tmp_path) == tmp_path / "coco/coco_val2014"
    assert get_dataset("coco_2017_test").image_prefix == "COCO_test2015_"
    assert get_dataset("voc_2007_test").devkit_path(tmp_path) == tmp_path / "VOC2007/VOCdevkit2007"
    assert get_dataset("cityscapes_fine_instanceonly_seg_val").annotation_file.endswith(
        "instancesonly_filtered_gtFine_val.json")
    assert len(get_dataset("coco_2017_val").category_names) == 80


def test_keypoint_metadata():
    coco_kp = get_dataset("keypoints_coco_2017_val")
    assert len(coco_kp.keypoint_names) == len(coco_kp.keypoint_oks_sigmas) == 17
    assert coco_kp.keypoint_oks_sigmas[0] == pytest.approx(0.026)   # COCO's nose sigma
    assert coco_kp.keypoint_oks_sigmas[11] == pytest.approx(0.107)  # hips
    for a, b in coco_kp.keypoint_flip_map:
        assert a.replace("left", "right") == b and a in coco_kp.keypoint_names
    stars = get_dataset("shapes_kp_train")
    assert stars.category_names == ("star",) and len(stars.keypoint_names) == 5
    assert len(stars.keypoint_oks_sigmas) == 5 and not get_dataset("shapes_train").has_keypoints


def test_unknown_name_suggests_closest():
    with pytest.raises(DatasetError, match="coco_2017_val"):
        get_dataset("coco_2017_vall")
    with pytest.raises(DatasetError, match="unknown dataset 'zzz'"):
        get_dataset("zzz")


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON_DATA_ROOT", raising=False)
    assert resolve_data_root() == tmp_path / "results" / "data"
    monkeypatch.setenv("DETECTRON_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_missing_coco_files_name_the_path(tmp_path):
    with pytest.raises(DatasetError) as error:
        materialize_dataset("coco_2017_val", data_root=tmp_path)
    assert str(tmp_path / "coco/annotations/instances_val2017.json") in str(error.value)
    annotation = tmp_path / "coco/annotations/instances_val2017.json"
    annotation.parent.mkdir(parents=True)
    annotation.write_text("{}")
    with pytest.raises(DatasetError, match="coco_val2017"):
        materialize_dataset("coco_2017_val", data_root=tmp_path)
    (tmp_path / "coco/coco_val2017").mkdir()
    assert materialize_dataset("coco_2017_val", data_root=tmp_path) == annotation


def test_register_call_and_yaml(clean_catalog, tmp_path):
    entry = register_coco_dataset("parts", "parts/train.json", "parts/images",
                                  category_names=["bolt", "nut"], owner="lab")
    assert entry.category_names == ("bolt", "nut") and entry.extra == {"owner": "lab"}
    assert register_coco_dataset("parts", "parts/train.json", "parts/images",
                                 category_names=["bolt", "nut"], owner="lab") == entry
    with pytest.raises(DatasetError, match="already registered"):
        register_coco_dataset("parts", "other.json", "parts/images")
    with pytest.raises(DatasetError, match="built-in"):
        register_coco_dataset("coco_2017_val", "x.json", "images")

    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(
        "widgets_val:\n"
        f"  annotation_file: {tmp_path}/w.json\n"
        "  image_directory: widgets/images\n"
        "  keypoint_names: [a, b]\n"
        "  keypoint_flip_map: [[a, b]]\n")
    assert register_datasets_from_yaml(catalog_file) == ["widgets_val"]
    widgets = get_dataset("widgets_val")
    assert widgets.keypoint_flip_map == (("a", "b"),)
    assert widgets.annotation_path(tmp_path / "root") == tmp_path / "w.json"
    assert widgets.image_path(tmp_path / "root") == tmp_path / "root/widgets/images"

    bad = tmp_path / "bad.yaml"
    bad.write_text("broken:\n  image_directory: x\n")
    with pytest.raises(DatasetError, match="broken.*annotation_file"):
        register_datasets_from_yaml(bad)
    bad.write_text("a: [unclosed\n")
    with pytest.raises(DatasetError, match="not valid YAML"):
        register_datasets_from_yaml(bad)
    with pytest.raises(DatasetError, match="not found"):
        register_datasets_from_yaml(tmp_path / "absent.yaml")


def test_cli_generates_shapes_val_pycocotools_opens(tmp_path, capsys):
    """The full 500-image split (about 3-5 s with 2 processes); a second call reuses it."""
    assert main(["data", "shapes_val", "--data-root", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / "shapes/shapes_val/annotations.json")
    coco = COCO(path)
    assert len(coco.getImgIds()) == 500
    assert json.loads(open(path).read())["info"]["seed"] == get_dataset("shapes_val").synthetic["seed"]
    mtime = (tmp_path / "shapes/shapes_val/annotations.json").stat().st_mtime_ns
    assert main(["data", "shapes_val", "--data-root", str(tmp_path)]) == 0
    assert (tmp_path / "shapes/shapes_val/annotations.json").stat().st_mtime_ns == mtime


def test_cli_reports_errors(tmp_path, capsys):
    assert main(["data", "shapes_vall", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'shapes_vall'" in err and "shapes_val" in err
