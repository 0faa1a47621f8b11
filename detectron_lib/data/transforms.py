"""Image reading, resizing and flipping, with the annotations kept in step.

Detectron's conventions: images are BGR, resized so the short side equals a target scale
unless that makes the long side exceed MAX_SIZE; boxes are x1y1x2y2 in pixels of the resized
image and ``im_scale`` is returned so that predictions can be mapped back to the original
image. Normalization and padding are the model's (modeling.image_io).
"""
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from detectron_lib.errors import DatasetError
from detectron_lib.structures.instances import Instances
from detectron_lib.structures.keypoints import flip_keypoints, scale_keypoints
from detectron_lib.structures.masks import flip_segm, scale_segm


class ImageReadError(DatasetError):
    """An image file is missing, cannot be decoded, or has pixel values with no known range.

    ``path`` is the file and ``problem`` the short reason ("not found", "cannot be decoded
    (...)", ...), so that a check of many images can list them all.
    """

    def __init__(self, path, problem, hint):
        self.path, self.problem = str(path), problem
        super().__init__(f"image {path} {problem}; {hint}")


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def image_to_rgb(image):
    """(H, W, 3) uint8 RGB array of a PIL image, keeping the real range of its pixel values.

    PIL's ``convert("RGB")`` is right for every 8-bit mode (1, L, LA, P, PA, RGBA, RGBa,
    CMYK, YCbCr, LAB, HSV; alpha is dropped, not composited, as OpenCV's imread does) but
    clips wider ones at 255. So:

    * 16-bit integer modes (I;16, I;16L, I;16B, I;16N: 16-bit grayscale PNG, TIFF, PGM) and
      mode I (32-bit integer, which older Pillow gives 16-bit PNGs) are scaled from 0..65535
      to 0..255: round(v * 255 / 65535). Mode I values outside 0..65535 raise ValueError.
    * 32-bit float mode F: values in [0, 1] are scaled by 255, else values in [0, 255] are
      taken as they are (both rounded); any other range (negative, above 255, NaN or
      infinite values) raises ValueError, as no scaling is safe to guess.

    16-bit RGB(A) and gray+alpha PNGs come from Pillow as 8-bit already (the high byte of
    each value, within 1 of the scaling above). A mode PIL cannot convert raises ValueError.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"has PIL mode I with values in [{values.min()}, {values.max()}], "
                             f"outside the 16-bit range 0..65535 it is read as")
        gray = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and low >= 0 and high <= 255):
            raise ValueError(f"has PIL mode F (32-bit float) with values in [{low}, {high}]; "
                             f"float images must lie in [0, 1] or [0, 255]")
        gray = np.rint(values * np.float32(255.0 if high <= 1 else 1.0)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        # Pillow warns when such a palette image goes straight to RGB; the colours are the same.
        return np.asarray(image.convert("RGBA"))[:, :, :3]
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as e:
        raise ValueError(f"has PIL mode {mode}, which cannot be converted to RGB ({e})") from None


def read_image_bgr(path):
    """Read an image file as (H, W, 3) uint8 BGR (see ``image_to_rgb`` for modes other than
    8-bit ones); an unreadable file raises ImageReadError (a DatasetError).

    The image is decoded in full, so a truncated file fails here. The pixels are taken in
    their stored orientation: an EXIF Orientation tag is ignored, as Detectron's cv2.imread
    did and as COCO's annotations (made in stored pixel coordinates) require.
    """
    try:
        with Image.open(path) as image:
            image.load()
            try:
                rgb = image_to_rgb(image)
            except ValueError as e:
                raise ImageReadError(path, str(e), "convert the file to 8-bit RGB") from None
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "not found", "check the dataset's image directory") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"cannot be decoded ({e})",
                             "replace the file or remove it from the annotations") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def compute_resize_scale(height, width, target_size, max_size):
    """Scale that makes the short side ``target_size``, reduced if the long side would then
    exceed ``max_size`` (Detectron's prep_im_for_blob)."""
    short_side, long_side = min(height, width), max(height, width)
    scale = float(target_size) / short_side
    if round(scale * long_side) > max_size:
        scale = float(max_size) / long_side
    return scale


def resized_size(height, width, scale):
    """(round(H * scale), round(W * scale)), at least 1 pixel each: the size of an image
    resized by ``scale``."""
    return max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)


def resize_image(image, scale):
    """Bilinear resize of an (H, W, 3) uint8 image to resized_size(H, W, scale)."""
    height, width = image.shape[:2]
    new_height, new_width = resized_size(height, width, scale)
    if (new_height, new_width) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR))


def image_tensor(image_bgr):
    """(H, W, 3) uint8 BGR array -> the (3, H, W) uint8 tensor a detector takes."""
    return torch.from_numpy(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)))


def image_array(image):
    """The inverse of image_tensor: a (3, H, W) tensor of 0..255 values (on any device) ->
    (H, W, 3) uint8 contiguous array."""
    return np.ascontiguousarray(image.permute(1, 2, 0).to("cpu", torch.uint8).numpy())


def transform_annotations(record, scale, flip, keypoint_flip_perm=None):
    """The record's annotations for its image flipped (optionally) and then scaled.

    The record's boxes and precomputed proposals are Boxes in the model's convention
    (loader.in_box_convention), which flipping keeps and which the image's last pixel
    follows for flipped polygons and keypoints.
    Returns a dict of boxes (Boxes (N, 4) float32), classes (N,) int64, is_crowd (N,) bool,
    segms (list or None), keypoints (N, K, 3) float32 or None, and, when the record has
    precomputed proposals, proposals (Boxes (P, 4) float32) and proposal_scores (P,).
    """
    height, width = record["height"], record["width"]
    new_height, new_width = resized_size(height, width, scale)
    scale_32 = float(np.float32(scale))
    boxes = record["boxes"]
    proposals = record.get("proposals")
    segms = record.get("segms")
    keypoints = record.get("keypoints")
    if flip:
        last_x = boxes.convention.last(width)
        boxes = boxes.flip(width)
        if segms is not None:
            segms = [flip_segm(s, last_x) for s in segms]
        if keypoints is not None:
            if keypoint_flip_perm is None:
                raise DatasetError(f"{record['file_name']}: flipping keypoints needs the "
                                   f"dataset's keypoint flip map")
            keypoints = flip_keypoints(keypoints, last_x, keypoint_flip_perm)
        if proposals is not None:
            proposals = proposals.flip(width)
    targets = {
        "boxes": boxes * scale_32,
        "classes": torch.from_numpy(np.asarray(record["classes"], dtype=np.int64)),
        "is_crowd": torch.from_numpy(np.asarray(record["is_crowd"], dtype=bool)),
        "segms": None if segms is None else [scale_segm(s, scale, new_height, new_width)
                                             for s in segms],
        "keypoints": None if keypoints is None else torch.from_numpy(
            scale_keypoints(keypoints, scale)),
    }
    if proposals is not None:
        targets["proposals"] = proposals * scale_32
        targets["proposal_scores"] = torch.from_numpy(record["proposal_scores"])
    return targets


def prepare_sample(record, target_size, max_size, flip=False, keypoint_flip_perm=None):
    """Read, optionally flip and resize one record's image with its annotations (see
    transform_annotations). With ``target_size``
    None the image keeps its size: the model resizes it (modeling.image_io).

    Returns a dict: image (3, H', W') uint8 BGR tensor (the model normalizes it), image_size
    (H', W'), im_scale (float, None when not resized), original_size (H, W), image_id,
    flipped (bool), targets (see transform_annotations).
    """
    image = read_image_bgr(record["file_name"])
    if image.shape[:2] != (record["height"], record["width"]):
        raise DatasetError(
            f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} but its "
            f"annotation says {record['width']}x{record['height']}; fix the annotation file")
    if flip:
        image = image[:, ::-1]
    scale = None
    if target_size is not None:
        scale = compute_resize_scale(record["height"], record["width"], target_size, max_size)
        image = resize_image(np.ascontiguousarray(image), scale)
    return {
        "image": image_tensor(image),
        "image_size": tuple(image.shape[:2]),
        "im_scale": scale,
        "original_size": (record["height"], record["width"]),
        "image_id": record["image_id"],
        "flipped": bool(flip),
        "targets": transform_annotations(record, 1.0 if scale is None else scale, flip,
                                         keypoint_flip_perm),
    }


def augmentation_for_position(seed, position, scales, use_flip):
    """(target scale, flip, sample seed) for the sample at global stream ``position``.

    A pure function of (seed, position), never of worker RNG state, so that a run resumed at
    any iteration sees exactly the augmentations an uninterrupted run would. The sample seed
    (an int < 2**31) seeds the model's per-image sampling of anchors and RoIs.
    """
    rng = np.random.default_rng([int(seed) % 2**32, int(position)])
    target_size = scales[int(rng.integers(len(scales)))]
    flip = bool(rng.random() < 0.5) and bool(use_flip)
    sample_seed = int(rng.integers(2**31))
    return target_size, flip, sample_seed


@dataclass
class Batch:
    """A collated batch.

    images: [(3, h, w) uint8 BGR] as the model takes them (modeling.image_io); image_sizes:
    [(h, w)] of each; im_scales: [float] resize factors, or None when the images keep their
    original size (the model resizes them); original_sizes: [(h, w)]; image_ids; flipped:
    [bool]; positions / seeds: [int] global stream positions and per-sample RNG seeds
    (training only, else None); targets: [Instances(boxes, classes[, segms, keypoints])] of
    the non-crowd objects in resized-image pixels; crowd_boxes: [Boxes (C, 4)] crowd
    regions (to ignore, as Detectron's CROWD_FILTER_THRESH does); proposals:
    [Instances(boxes, scores)] precomputed proposals in resized-image pixels, or None.
    """

    images: torch.Tensor
    image_sizes: list
    im_scales: list
    original_sizes: list
    image_ids: list
    flipped: list
    targets: list
    crowd_boxes: list
    proposals: list = None
    positions: list = None
    seeds: list = None

    @property
    def training(self):
        return self.positions is not None

    def model_inputs(self, device):
        """Keyword arguments of the detector's forward(), moved to ``device``; targets and
        seeds only for training batches."""
        inputs = {"images": [image.to(device) for image in self.images],
                  "scales": self.im_scales, "original_sizes": self.original_sizes}
        if self.training:
            inputs["targets"] = [t.to(device) for t in self.targets]
            inputs["seeds"] = self.seeds
        if self.proposals is not None:
            inputs["proposals"] = [p.to(device) for p in self.proposals]
        return inputs


def _instances(targets, image_size):
    """Split a sample's target dict into (non-crowd Instances, crowd boxes, proposals)."""
    keep = ~targets["is_crowd"]
    fields = {"boxes": targets["boxes"][keep], "classes": targets["classes"][keep]}
    if targets["segms"] is not None:
        fields["segms"] = [s for s, k in zip(targets["segms"], keep.tolist()) if k]
    if targets["keypoints"] is not None:
        fields["keypoints"] = targets["keypoints"][keep]
    proposals = None
    if "proposals" in targets:
        proposals = Instances(image_size, boxes=targets["proposals"],
                              scores=targets["proposal_scores"])
    return Instances(image_size, **fields), targets["boxes"][~keep], proposals


def collate_batch(samples):
    """Batch prepared samples (from prepare_sample, with 'position' and 'seed' when training)
    into a Batch; the model pads the images."""
    targets, crowd_boxes, proposals = zip(*(_instances(s["targets"], s["image_size"])
                                            for s in samples))
    training = "position" in samples[0]
    return Batch(
        images=[s["image"] for s in samples],
        image_sizes=[s["image_size"] for s in samples],
        im_scales=None if samples[0]["im_scale"] is None else [s["im_scale"] for s in samples],
        original_sizes=[s["original_size"] for s in samples],
        image_ids=[s["image_id"] for s in samples],
        flipped=[s["flipped"] for s in samples],
        targets=list(targets),
        crowd_boxes=list(crowd_boxes),
        proposals=list(proposals) if proposals[0] is not None else None,
        positions=[s["position"] for s in samples] if training else None,
        seeds=[s["seed"] for s in samples] if training else None,
    )
