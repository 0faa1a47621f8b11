"""Single-image inference for ``detectron infer`` (Detectron's tools/infer_simple.py).

Images are read as BGR and given to the model as they are (it resizes, normalizes and maps
its detections back: modeling.image_io), and written as PNG files with the detections drawn
on them.
"""
import logging
from pathlib import Path

import torch

from detectron_lib.data.catalog import get_dataset
from detectron_lib.data.transforms import ImageReadError, image_tensor, read_image_bgr
from detectron_lib.engine.checkpoint_formats import is_onnx_file
from detectron_lib.engine.distributed import resolve_device
from detectron_lib.errors import ConfigError, DatasetError, DetectronError
from detectron_lib.evaluation.coco import encode_masks_rle
from detectron_lib.inference.engine import load_model_for_inference
from detectron_lib.inference.onnx_runtime import OnnxRuntimeDetector
from detectron_lib.inference.tta import DetectorWithTTA, augmentation_enabled
from detectron_lib.inference.vis import draw_detections
from detectron_lib.utils.io import atomic_write, write_json_atomic

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Detectron's infer_simple draws keypoints whose heatmap logit is at least this
KEYPOINT_DRAW_THRESH = 2.0


class UndecodableImagesError(DetectronError):
    """Input images of ``detectron infer`` that cannot be decoded; the others were done."""

    def __init__(self, skipped, total, output_dir):
        self.skipped = list(skipped)  # [(path, problem)], problem e.g. "cannot be decoded (...)"
        listing = "; ".join(f"{path} {problem}" for path, problem in self.skipped)
        super().__init__(
            f"{len(self.skipped)} of {total} input images were skipped (the others are written "
            f"to {output_dir}): {listing}. Replace or remove them")


def list_images(path):
    """The image files named by ``path``: the file itself, or a directory's images, sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in directory '{path}'")
        return files
    if not path.is_file():
        raise DatasetError(f"input '{path}' is neither an image file nor a directory")
    return [path]


def class_names_for(cfg):
    """{class label: category name} from the first dataset of the config whose catalog entry
    names its categories, to label drawn detections; labels are 1..K in category-id order or,
    with MODEL.LABELS_ARE_CATEGORY_IDS, the category ids. {} if no dataset names them."""
    for name in tuple(cfg.TRAIN.DATASETS) + tuple(cfg.TEST.DATASETS):
        try:
            entry = get_dataset(name)
        except DatasetError:
            continue
        if entry.category_names:
            if cfg.MODEL.LABELS_ARE_CATEGORY_IDS:
                return entry.names_by_category_id()
            return dict(enumerate(entry.category_names, start=1))
    return {}


def keypoint_skeleton_for(cfg):
    """Index pairs of the keypoints joined when drawn, from the first dataset of the config
    whose catalog entry names as many keypoints as the model predicts (KRCNN.NUM_KEYPOINTS)
    and a skeleton; [] if none does (a model of 5 keypoints run with COCO's datasets named)."""
    for name in tuple(cfg.TRAIN.DATASETS) + tuple(cfg.TEST.DATASETS):
        try:
            entry = get_dataset(name)
        except DatasetError:
            continue
        if (entry.keypoint_skeleton
                and len(entry.keypoint_names or ()) == cfg.KRCNN.NUM_KEYPOINTS):
            index = {kp: k for k, kp in enumerate(entry.keypoint_names)}
            return [(index[a], index[b]) for a, b in entry.keypoint_skeleton]
    return []


class Predictor:
    """Runs a model on single BGR images: ``predictor(image) -> Instances``; with
    TEST.BBOX_AUG / MASK_AUG / KPS_AUG through DetectorWithTTA. ``weights`` may be a model
    exported by `detectron export` (told by content), run by ONNX Runtime on the CPU."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        weights = weights or cfg.TEST.WEIGHTS
        if weights and is_onnx_file(weights):
            if augmentation_enabled(cfg):
                raise ConfigError(f"'{weights}' is an exported ONNX model, which runs without "
                                  "test-time augmentation: turn TEST.BBOX_AUG / MASK_AUG / "
                                  "KPS_AUG off, or give the .pth weights")
            self.device = torch.device("cpu")
            self.model = OnnxRuntimeDetector(weights)
            return
        self.device = resolve_device(cfg.DEVICE)
        self.model = load_model_for_inference(cfg, weights, self.device)
        if augmentation_enabled(cfg):
            self.model = DetectorWithTTA(self.model, cfg)

    @torch.no_grad()
    def __call__(self, image_bgr):
        """image_bgr: (H, W, 3) uint8. Detections in its pixels (masks (N, H, W) bool when the
        model predicts them, keypoints (N, K, 3) (x, y, score) when it predicts them)."""
        (out,) = self.model([image_tensor(image_bgr).to(self.device)])
        return out.to("cpu")


def detections_to_json(detections, class_names=None):
    """One image's detections as JSON-ready dicts, best first: ``box`` [x1, y1, x2, y2] in the
    pixels of the input image, ``label`` (the model's class), ``category`` (its name in
    ``class_names``, {label: name}, when known),
    ``score``, and when predicted ``mask`` (COCO compressed RLE of the binary mask) and
    ``keypoints`` [[x, y, score], ...] (the heatmap logit, or detectron2's normalized score
    with KRCNN.NORMALIZED_KEYPOINT_SCORES)."""
    masks = encode_masks_rle(detections.masks) if detections.has("masks") else None
    entries = []
    for i, (box, label, score) in enumerate(zip(detections.boxes.tensor.tolist(),
                                                detections.classes.tolist(),
                                                detections.scores.tolist())):
        entry = {"box": box, "label": label, "score": score}
        if label in (class_names or {}):
            entry["category"] = class_names[label]
        if masks is not None:
            entry["mask"] = masks[i]
        if detections.has("keypoints"):
            entry["keypoints"] = detections.keypoints[i].tolist()
        entries.append(entry)
    return entries


def infer_images(cfg, weights, input_path, output_dir, score_thresh=0.7, write_json=False):
    """Write ``<output_dir>/<image stem>.png`` with the detections scoring >= ``score_thresh``
    drawn, and with ``write_json`` ``<image stem>.json`` with all of them (detections_to_json);
    yields each path written (each written atomically).

    An input image that cannot be decoded is skipped with a warning and nothing is written
    for it; once the others are done, UndecodableImagesError lists the skipped ones."""
    files = list_images(input_path)
    predictor = Predictor(cfg, weights)
    names = class_names_for(cfg)
    skeleton = keypoint_skeleton_for(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    skipped = []
    for path in files:
        try:
            bgr = read_image_bgr(path)
        except ImageReadError as err:  # its message speaks of annotations: the problem alone
            logger.warning("skipping %s: it %s", path, err.problem)
            skipped.append((path, err.problem))
            continue
        detections = predictor(bgr)
        drawn = draw_detections(bgr[:, :, ::-1], detections.boxes.tensor.numpy(),
                                detections.classes.numpy(),
                                detections.scores.numpy(), names,
                                masks=detections.masks.numpy() if detections.has("masks") else None,
                                keypoints=(detections.keypoints.numpy()
                                           if detections.has("keypoints") else None),
                                skeleton=skeleton, score_thresh=score_thresh,
                                keypoint_thresh=KEYPOINT_DRAW_THRESH)
        out_path = output_dir / f"{path.stem}.png"
        with atomic_write(out_path, "wb") as f:
            drawn.save(f, format="PNG")
        yield out_path
        if write_json:
            json_path = output_dir / f"{path.stem}.json"
            write_json_atomic(json_path, {
                "image": str(path), "height": int(bgr.shape[0]), "width": int(bgr.shape[1]),
                "detections": detections_to_json(detections, names)})
            yield json_path
    if skipped:
        raise UndecodableImagesError(skipped, len(files), output_dir)
