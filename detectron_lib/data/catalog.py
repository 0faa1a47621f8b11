"""Dataset catalog: Detectron's dataset names, resolved under a data root, plus user entries.

Built-in entries use the relative file layout of Detectron's ``dataset_catalog.py`` (e.g.
``coco/annotations/instances_val2017.json`` and ``coco/coco_val2017``), so an existing
Detectron ``data/`` folder works as a data root as is. The data root is, in order: an
explicit argument, ``$DETECTRON_DATA_ROOT``, else ``results/data`` under the current
directory. Relative paths of user-registered entries resolve under the data root too, so
one catalog YAML serves a laptop and a cluster.
"""
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detectron_lib.data import shapes
from detectron_lib.errors import DatasetError

DATA_ROOT_ENV = "DETECTRON_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("results") / "data"

COCO_CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
# COCO's JSON category ids of COCO_CATEGORY_NAMES: 1..90 with ten ids unused.
COCO_CATEGORY_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)
COCO_PERSON_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_PERSON_KEYPOINT_FLIP_MAP = tuple(
    (f"left_{part}", f"right_{part}")
    for part in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
)
# The lines drawn between keypoints: the 'skeleton' of COCO's person category (1-based there).
COCO_PERSON_KEYPOINT_SKELETON = tuple(
    (COCO_PERSON_KEYPOINT_NAMES[a - 1], COCO_PERSON_KEYPOINT_NAMES[b - 1])
    for a, b in ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
                 (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5),
                 (4, 6), (5, 7))
)
# COCO's per-keypoint OKS standard deviations (cocoeval.py's kpt_oks_sigmas).
COCO_PERSON_KEYPOINT_OKS_SIGMAS = tuple(
    v / 10.0 for v in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                       1.07, 1.07, .87, .87, .89, .89)
)
VOC_CATEGORY_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CITYSCAPES_CATEGORY_NAMES = (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

_METADATA_KEYS = ("category_names", "category_ids", "keypoint_names", "keypoint_flip_map",
                  "keypoint_oks_sigmas", "keypoint_skeleton", "image_prefix", "devkit_dir")


@dataclass(frozen=True)
class DatasetEntry:
    """Where a dataset lives and what it contains.

    annotation_file, image_dir, devkit_dir: paths, relative ones under the data root.
    category_names: names in category-id order, or None to take them from the JSON.
    category_ids: the JSON category ids of category_names, or None for 1, 2, ...
    keypoint_*: per-keypoint names, left/right pairs swapped by a flip, OKS sigmas, and the
        pairs of names joined by a line when keypoints are drawn (skeleton).
    image_prefix: prefix of image file names missing from the JSON (COCO 2017 test).
    synthetic: generate_shapes_dataset arguments for generated datasets, else None.
    """

    name: str
    annotation_file: str
    image_dir: str
    category_names: tuple = None
    category_ids: tuple = None
    keypoint_names: tuple = None
    keypoint_flip_map: tuple = None
    keypoint_oks_sigmas: tuple = None
    keypoint_skeleton: tuple = None
    image_prefix: str = ""
    devkit_dir: str = None
    synthetic: dict = None
    extra: dict = field(default_factory=dict)

    @property
    def has_keypoints(self):
        return self.keypoint_names is not None

    def annotation_path(self, data_root=None):
        return _under_root(self.annotation_file, data_root)

    def image_path(self, data_root=None):
        return _under_root(self.image_dir, data_root)

    def devkit_path(self, data_root=None):
        return _under_root(self.devkit_dir, data_root) if self.devkit_dir else None

    def names_by_category_id(self):
        """{JSON category id: name}, or {} when the catalog does not name the categories."""
        names = self.category_names or ()
        return dict(zip(self.category_ids or range(1, len(names) + 1), names))


def resolve_data_root(data_root=None):
    """The data root: ``data_root``, else $DETECTRON_DATA_ROOT, else ./results/data (absolute)."""
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(data_root).expanduser().absolute()


def _under_root(path, data_root):
    path = Path(path).expanduser()
    return path if path.is_absolute() else resolve_data_root(data_root) / path


def _coco(name, image_dir, annotation_file, keypoints=False, image_prefix=""):
    if keypoints:
        return DatasetEntry(name, f"coco/annotations/{annotation_file}", f"coco/{image_dir}",
                            category_names=("person",),
                            keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
                            keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
                            keypoint_oks_sigmas=COCO_PERSON_KEYPOINT_OKS_SIGMAS,
                            keypoint_skeleton=COCO_PERSON_KEYPOINT_SKELETON,
                            image_prefix=image_prefix)
    return DatasetEntry(name, f"coco/annotations/{annotation_file}", f"coco/{image_dir}",
                        category_names=COCO_CATEGORY_NAMES, category_ids=COCO_CATEGORY_IDS,
                        image_prefix=image_prefix)


def _voc(year, image_set):
    return DatasetEntry(f"voc_{year}_{image_set}",
                        f"VOC{year}/annotations/voc_{year}_{image_set}.json",
                        f"VOC{year}/JPEGImages", category_names=VOC_CATEGORY_NAMES,
                        devkit_dir=f"VOC{year}/VOCdevkit{year}")


def _cityscapes(split, annotation_file):
    return DatasetEntry(f"cityscapes_fine_instanceonly_seg_{split}",
                        f"cityscapes/annotations/{annotation_file}", "cityscapes/images",
                        category_names=CITYSCAPES_CATEGORY_NAMES,
                        extra={"raw_dir": "cityscapes/raw"})


def _shapes(name, num_images, seed, keypoints):
    kp = {}
    if keypoints:
        kp = dict(keypoint_names=shapes.STAR_KEYPOINT_NAMES,
                  keypoint_flip_map=shapes.STAR_KEYPOINT_FLIP_MAP,
                  keypoint_oks_sigmas=shapes.STAR_KEYPOINT_OKS_SIGMAS,
                  keypoint_skeleton=tuple((shapes.STAR_KEYPOINT_NAMES[a - 1],
                                           shapes.STAR_KEYPOINT_NAMES[b - 1])
                                          for a, b in shapes.STAR_SKELETON))
    return DatasetEntry(name, f"shapes/{name}/{shapes.ANNOTATION_FILE}",
                        f"shapes/{name}/{shapes.IMAGE_DIR}",
                        category_names=shapes.dataset_categories(keypoints),
                        synthetic={"num_images": num_images, "seed": seed,
                                   "keypoints": keypoints},
                        **kp)


_BUILTIN = [
    _coco("coco_2014_train", "coco_train2014", "instances_train2014.json"),
    _coco("coco_2014_val", "coco_val2014", "instances_val2014.json"),
    _coco("coco_2014_minival", "coco_val2014", "instances_minival2014.json"),
    _coco("coco_2014_valminusminival", "coco_val2014", "instances_valminusminival2014.json"),
    _coco("coco_2015_test", "coco_test2015", "image_info_test2015.json"),
    _coco("coco_2015_test-dev", "coco_test2015", "image_info_test-dev2015.json"),
    _coco("coco_2017_train", "coco_train2017", "instances_train2017.json"),
    _coco("coco_2017_val", "coco_val2017", "instances_val2017.json"),
    # COCO 2017 test and test-dev reuse the 2015 test images.
    _coco("coco_2017_test", "coco_test2015", "image_info_test2017.json",
          image_prefix="COCO_test2015_"),
    _coco("coco_2017_test-dev", "coco_test2015", "image_info_test-dev2017.json",
          image_prefix="COCO_test2015_"),
    _coco("keypoints_coco_2014_train", "coco_train2014", "person_keypoints_train2014.json", True),
    _coco("keypoints_coco_2014_val", "coco_val2014", "person_keypoints_val2014.json", True),
    _coco("keypoints_coco_2014_minival", "coco_val2014", "person_keypoints_minival2014.json",
          True),
    _coco("keypoints_coco_2014_valminusminival", "coco_val2014",
          "person_keypoints_valminusminival2014.json", True),
    _coco("keypoints_coco_2017_train", "coco_train2017", "person_keypoints_train2017.json", True),
    _coco("keypoints_coco_2017_val", "coco_val2017", "person_keypoints_val2017.json", True),
    _voc(2007, "train"), _voc(2007, "val"), _voc(2007, "trainval"), _voc(2007, "test"),
    _voc(2012, "train"), _voc(2012, "val"), _voc(2012, "trainval"),
    _cityscapes("train", "instancesonly_gtFine_train.json"),
    # Detectron evaluates on the filtered val set (some contours fail to convert).
    _cityscapes("val", "instancesonly_filtered_gtFine_val.json"),
    _cityscapes("test", "instancesonly_gtFine_test.json"),
    _shapes("shapes_train", num_images=2000, seed=1, keypoints=False),
    _shapes("shapes_val", num_images=500, seed=2, keypoints=False),
    _shapes("shapes_kp_train", num_images=1000, seed=3, keypoints=True),
    _shapes("shapes_kp_val", num_images=250, seed=4, keypoints=True),
]
_BUILTIN_NAMES = frozenset(entry.name for entry in _BUILTIN)
_CATALOG = {entry.name: entry for entry in _BUILTIN}


def dataset_names():
    """All registered dataset names, sorted."""
    return sorted(_CATALOG)


def get_dataset(name):
    """The DatasetEntry of ``name``; an unknown name raises DatasetError with the closest names."""
    try:
        return _CATALOG[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_CATALOG), n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else (
            "register it with register_coco_dataset() or a DATASET_CATALOG_FILE")
        raise DatasetError(f"unknown dataset '{name}': {hint}") from None


def register_coco_dataset(name, annotation_file, image_dir, **metadata):
    """Register a COCO-json dataset under ``name``.

    Args:
        annotation_file, image_dir: paths; relative ones resolve under the data root.
        **metadata: any of category_names, category_ids, keypoint_names, keypoint_flip_map,
            keypoint_oks_sigmas, keypoint_skeleton, image_prefix, devkit_dir; other keys are
            kept in ``extra``.
    Returns the DatasetEntry. Re-registering an identical entry is a no-op; redefining a
    name (or a built-in one) raises DatasetError.
    """
    known = {k: v for k, v in metadata.items() if k in _METADATA_KEYS}
    extra = {k: v for k, v in metadata.items() if k not in _METADATA_KEYS}
    for key in ("category_names", "category_ids", "keypoint_names", "keypoint_oks_sigmas"):
        if known.get(key) is not None:
            known[key] = tuple(known[key])
    for key in ("keypoint_flip_map", "keypoint_skeleton"):
        if known.get(key) is not None:
            known[key] = tuple(tuple(pair) for pair in known[key])
    entry = DatasetEntry(str(name), str(annotation_file), str(image_dir), extra=extra, **known)
    existing = _CATALOG.get(entry.name)
    if existing is not None and existing != entry:
        what = "a built-in dataset" if entry.name in _BUILTIN_NAMES else "already registered"
        raise DatasetError(f"dataset name '{entry.name}' is {what} with other paths or "
                           f"metadata; choose another name")
    _CATALOG[entry.name] = entry
    return entry


def register_datasets_from_yaml(path):
    """Register every entry of a catalog YAML file; returns the registered names.

    The file maps names to entries with ``annotation_file`` and ``image_directory`` (as in
    Detectron's catalog; ``image_dir`` is accepted too) and optional metadata keys:

        my_parts_train:
          annotation_file: parts/annotations/train.json
          image_directory: parts/images
          category_names: [bolt, nut]
    """
    path = Path(path)
    try:
        with open(path) as f:
            entries = yaml.safe_load(f)
    except FileNotFoundError:
        raise DatasetError(f"dataset catalog file {path} not found; fix DATASET_CATALOG_FILE "
                           f"or create it") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"dataset catalog file {path} is not valid YAML: {e}") from None
    if not isinstance(entries, dict):
        raise DatasetError(f"dataset catalog file {path} must map dataset names to entries")
    names = []
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: entry '{name}' must be a mapping with "
                               f"annotation_file and image_directory")
        entry = dict(entry)
        image_dir = entry.pop("image_directory", None) or entry.pop("image_dir", None)
        annotation_file = entry.pop("annotation_file", None)
        if not image_dir or not annotation_file:
            raise DatasetError(f"{path}: entry '{name}' needs both annotation_file and "
                               f"image_directory")
        register_coco_dataset(name, annotation_file, image_dir, **entry)
        names.append(name)
    return names


def register_datasets_from_cfg(cfg):
    """Register the entries of cfg.DATASET_CATALOG_FILE, if the config names one."""
    catalog_file = getattr(cfg, "DATASET_CATALOG_FILE", "")
    return register_datasets_from_yaml(catalog_file) if catalog_file else []


def materialize_dataset(name, data_root=None):
    """Make dataset ``name`` ready on disk and return its annotation file's path.

    Synthetic datasets are generated if absent (an existing, finished one is reused). A VOC
    set whose JSON is missing is converted from its devkit if that is present. For the
    others, the annotation file and image directory must exist; a DatasetError names the
    missing path and where the files belong.
    """
    entry = get_dataset(name)
    root = resolve_data_root(data_root)
    annotation_path = entry.annotation_path(root)
    if entry.synthetic is not None:
        return shapes.generate_shapes_dataset(annotation_path.parent, **entry.synthetic)

    devkit = entry.devkit_path(root)
    if not annotation_path.is_file() and devkit is not None and devkit.is_dir():
        from detectron_lib.data.voc import convert_voc_to_coco

        year = entry.name.split("_")[1]
        image_set = entry.name.split("_", 2)[2]
        convert_voc_to_coco(devkit / f"VOC{year}", image_set, annotation_path)

    where = f"(data root {root}: set it with --data-root, DATA_ROOT or ${DATA_ROOT_ENV})"
    if not annotation_path.is_file():
        extra = f", or the VOC devkit at {devkit}" if devkit is not None else ""
        raise DatasetError(f"dataset '{name}': annotation file {annotation_path} not found; "
                           f"put {annotation_path.name} there{extra} {where}")
    image_dir = entry.image_path(root)
    if not image_dir.is_dir():
        raise DatasetError(f"dataset '{name}': image directory {image_dir} not found; put the "
                           f"dataset's images there {where}")
    return annotation_path
