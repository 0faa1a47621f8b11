"""Loading COCO-json datasets into per-image records.

A record is a plain dict:

    file_name      absolute image path (str)
    image_id       int, the JSON image id
    height, width  int, image size in pixels
    boxes          (N, 4) float32, x1y1x2y2 in image pixels (clipped to the image)
    classes        (N,) int64, contiguous class ids 1..K (0 is background)
    is_crowd       (N,) bool
    segms          list of N segmentations (polygon lists or RLE dicts), or None when the
                   dataset has no masks
    keypoints      (N, K, 3) float32 (x, y, v), or None when the dataset has no keypoints
    annotation_ids (N,) int64, the JSON annotation ids
    dataset_name   str

Contiguous ids follow Detectron's json_category_id_to_contiguous_id: JSON category ids sorted,
numbered from 1.
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectron_lib.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CategoryMap:
    """Mapping between JSON category ids and contiguous class ids 1..K.

    json_ids: (K,) JSON id of class 1, 2, ...; names: the K category names.
    """

    json_ids: tuple
    names: tuple

    @property
    def num_classes(self):
        """K + 1: the foreground classes plus background (Detectron's MODEL.NUM_CLASSES)."""
        return len(self.json_ids) + 1

    @property
    def json_id_to_contiguous(self):
        return {json_id: k for k, json_id in enumerate(self.json_ids, start=1)}

    @property
    def contiguous_to_json_id(self):
        return {k: json_id for k, json_id in enumerate(self.json_ids, start=1)}

    def label_to_json_id(self, labels_are_category_ids=False):
        """{model class label: JSON category id}: contiguous labels 1..K (Detectron), or with
        ``labels_are_category_ids`` (MODEL.LABELS_ARE_CATEGORY_IDS) the JSON ids themselves."""
        if labels_are_category_ids:
            return {json_id: json_id for json_id in self.json_ids}
        return self.contiguous_to_json_id


@dataclass
class LoadedDataset:
    """records: per-image dicts (see module doc); keypoint_names: K names or None."""

    records: list
    categories: CategoryMap
    keypoint_names: tuple = None


def load_coco_json(annotation_file, image_dir, image_prefix="", min_area=0.0,
                   dataset_name=None):
    """Load a COCO-format JSON file into per-image records.

    Args:
        annotation_file: path of the JSON.
        image_dir: directory the images' file_name entries are relative to.
        image_prefix: prepended to every file_name (COCO 2017 test reuses 2015 images).
        min_area: annotations whose area is below this are dropped (TRAIN.GT_MIN_AREA).
        dataset_name: stored in each record; defaults to the JSON file's stem.
    Returns:
        LoadedDataset. Every image is kept, with or without annotations; use
        ``filter_for_training`` to drop those without a usable box.

    Degenerate annotations (zero area, a box empty after clipping to the image, area below
    ``min_area``, no valid polygon) are dropped and reported by one warning per file. A
    malformed file or annotation raises DatasetError naming the file and the annotation.
    """
    annotation_file = Path(annotation_file)
    dataset = _read_json(annotation_file)
    categories, keypoint_names = _parse_categories(dataset["categories"], annotation_file)
    json_to_contiguous = categories.json_id_to_contiguous
    images = _parse_images(dataset["images"], annotation_file)
    per_image = {image_id: [] for image_id in images}
    has_segms = False
    dropped = 0
    for ann in dataset.get("annotations") or []:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = f"{annotation_file}: annotation {ann_id}"
        if not isinstance(ann, dict):
            raise DatasetError(f"{annotation_file}: annotations must be objects, got {ann!r:.80}")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DatasetError(f"{where} refers to image id {ann.get('image_id')!r}, which is "
                               f"not in 'images'; fix or remove the annotation")
        if ann.get("category_id") not in json_to_contiguous:
            raise DatasetError(f"{where} has category id {ann.get('category_id')!r}, which is "
                               f"not in 'categories' {sorted(json_to_contiguous)}")
        if ann.get("ignore", 0) == 1:     # Detectron skips annotations marked ignore
            continue
        box = _parse_box(ann, where, image)
        segm = ann.get("segmentation")
        if segm:
            has_segms = True
            if isinstance(segm, list):
                segm = [p for p in segm if len(p) >= 6]   # a polygon needs 3 points
                if not segm:
                    dropped += 1
                    continue
        area = float(ann.get("area", (box[2] - box[0]) * (box[3] - box[1])))
        if area <= 0 or area < min_area or box[2] <= box[0] or box[3] <= box[1]:
            dropped += 1
            continue
        per_image[image["id"]].append({
            "id": ann_id, "box": box, "class": json_to_contiguous[ann["category_id"]],
            "crowd": bool(ann.get("iscrowd", 0)), "segm": segm or [],
            "keypoints": _parse_keypoints(ann, where, keypoint_names),
        })
    if dropped:
        logger.warning("dropped %d degenerate boxes in %s", dropped, annotation_file)

    name = dataset_name or annotation_file.stem
    image_dir = Path(image_dir).absolute()
    records = [
        _make_record(image, per_image[image_id], image_dir, image_prefix, name,
                     has_segms, keypoint_names)
        for image_id, image in images.items()
    ]
    return LoadedDataset(records, categories, keypoint_names)


def filter_for_training(records, require_keypoints=False):
    """Records with at least one non-crowd box (Detectron trains only on those) and, with
    ``require_keypoints`` (MODEL.KEYPOINTS_ON), at least one visible (v > 0) keypoint."""
    kept = [r for r in records if (~r["is_crowd"]).any()]
    if require_keypoints:
        kept = [r for r in kept
                if r["keypoints"] is not None and (r["keypoints"][:, :, 2] > 0).any()]
    if len(kept) < len(records):
        logger.info("training on %d of %d images (the others have no usable box%s)",
                    len(kept), len(records), " or keypoint" if require_keypoints else "")
    return kept


def _read_json(annotation_file):
    try:
        with open(annotation_file) as f:
            dataset = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"annotation file {annotation_file} not found; check the dataset "
                           f"catalog entry and the data root") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotation file {annotation_file} is not valid JSON: {e}") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list) \
            or not isinstance(dataset.get("categories"), list):
        raise DatasetError(f"annotation file {annotation_file} is not COCO json: it needs "
                           f"'images' and 'categories' lists (and optionally 'annotations')")
    if not isinstance(dataset.get("annotations", []), list):
        raise DatasetError(f"annotation file {annotation_file}: 'annotations' must be a list")
    return dataset


def _parse_categories(entries, annotation_file):
    try:
        entries = sorted(entries, key=lambda c: c["id"])
        json_ids = tuple(int(c["id"]) for c in entries)
        names = tuple(str(c["name"]) for c in entries)
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{annotation_file}: every category needs an integer 'id' and a "
                           f"'name'") from None
    if len(set(json_ids)) != len(json_ids):
        raise DatasetError(f"{annotation_file}: duplicate category ids in {list(json_ids)}")
    keypoint_lists = {tuple(c["keypoints"]) for c in entries if c.get("keypoints")}
    if len(keypoint_lists) > 1:
        raise DatasetError(f"{annotation_file}: categories define different keypoint lists; "
                           f"one dataset must use one keypoint layout")
    keypoint_names = next(iter(keypoint_lists)) if keypoint_lists else None
    return CategoryMap(json_ids, names), keypoint_names


def _parse_images(entries, annotation_file):
    images = {}
    for image in entries:
        try:
            image_id, height, width = image["id"], int(image["height"]), int(image["width"])
            file_name = str(image["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{annotation_file}: image entry {image!r:.120} needs 'id', "
                               f"'file_name', 'height' and 'width'") from None
        if height <= 0 or width <= 0:
            raise DatasetError(f"{annotation_file}: image {image_id} has size "
                               f"{width}x{height}; sizes must be positive")
        if image_id in images:
            raise DatasetError(f"{annotation_file}: image id {image_id} appears twice")
        images[image_id] = {"id": image_id, "file_name": file_name,
                            "height": height, "width": width}
    return images


def _parse_box(ann, where, image):
    """COCO [x, y, w, h] -> x1y1x2y2 clipped to the image, as a float list."""
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DatasetError(f"{where} has bbox {bbox!r}; expected [x, y, width, height]") from None
    if w < 0 or h < 0:
        raise DatasetError(f"{where} has negative width or height in bbox {bbox}; COCO boxes "
                           f"are [x, y, width, height] with width, height >= 0")
    width, height = image["width"], image["height"]
    return [min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]


def _parse_keypoints(ann, where, keypoint_names):
    if keypoint_names is None:
        return None
    values = ann.get("keypoints")
    if not values:
        return np.zeros((len(keypoint_names), 3), dtype=np.float32)
    if len(values) != 3 * len(keypoint_names):
        raise DatasetError(f"{where} has {len(values)} keypoint values; expected "
                           f"{3 * len(keypoint_names)} ([x, y, v] for {len(keypoint_names)} "
                           f"keypoints)")
    return np.asarray(values, dtype=np.float32).reshape(-1, 3)


def _make_record(image, anns, image_dir, image_prefix, dataset_name, has_segms,
                 keypoint_names):
    num = len(anns)
    record = {
        "file_name": str(image_dir / (image_prefix + image["file_name"])),
        "image_id": image["id"],
        "height": image["height"],
        "width": image["width"],
        "boxes": np.array([a["box"] for a in anns], dtype=np.float32).reshape(num, 4),
        "classes": np.array([a["class"] for a in anns], dtype=np.int64),
        "is_crowd": np.array([a["crowd"] for a in anns], dtype=bool),
        "segms": [a["segm"] for a in anns] if has_segms else None,
        "keypoints": None,
        "annotation_ids": np.array([a["id"] if a["id"] is not None else -1 for a in anns],
                                   dtype=np.int64),
        "dataset_name": dataset_name,
    }
    if keypoint_names is not None:
        record["keypoints"] = np.stack([a["keypoints"] for a in anns]).astype(np.float32) \
            if num else np.zeros((0, len(keypoint_names), 3), dtype=np.float32)
    return record


def load_dataset(name, data_root=None, min_area=0.0):
    """Materialize catalog dataset ``name`` and load it (see ``load_coco_json``).

    The JSON's category and keypoint names must agree with the catalog's metadata, so that a
    model trained on one dataset is not silently evaluated with another class order.
    """
    from detectron_lib.data.catalog import get_dataset, materialize_dataset

    entry = get_dataset(name)
    annotation_file = materialize_dataset(name, data_root)
    loaded = load_coco_json(annotation_file, entry.image_path(data_root),
                            image_prefix=entry.image_prefix, min_area=min_area,
                            dataset_name=name)
    if entry.category_names is not None and tuple(entry.category_names) != loaded.categories.names:
        raise DatasetError(
            f"{annotation_file}: categories {list(loaded.categories.names)} differ from the "
            f"catalog's {list(entry.category_names)} for dataset '{name}'; fix the file or "
            f"the catalog entry")
    if entry.category_ids is not None and tuple(entry.category_ids) != loaded.categories.json_ids:
        raise DatasetError(
            f"{annotation_file}: category ids {list(loaded.categories.json_ids)} differ from the "
            f"catalog's {list(entry.category_ids)} for dataset '{name}'; fix the file or the "
            f"catalog entry")
    if entry.keypoint_names is not None and loaded.keypoint_names is not None \
            and tuple(entry.keypoint_names) != loaded.keypoint_names:
        raise DatasetError(
            f"{annotation_file}: keypoints {list(loaded.keypoint_names)} differ from the "
            f"catalog's {list(entry.keypoint_names)} for dataset '{name}'")
    return loaded
