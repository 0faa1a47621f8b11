"""Synthetic "shapes" datasets in COCO format: the CPU-sized stand-in for COCO.

Each image is a textured, cluttered background with 1-8 overlapping coloured shapes painted
in order. An instance's mask is the part of it still visible once every later shape is
painted: it is stored as one COCO polygon when that polygon rasterizes back to exactly the
visible pixels (one simple region), else as compressed RLE; fully hidden instances are
dropped. Boxes are the tight box of the visible mask and area its pixel count, so the
annotations agree with pycocotools to the pixel.

The keypoint variant annotates only stars, with their five tips as keypoints; other shapes
appear as unlabeled occluders.

Everything is a pure function of (seed, image index): the same seed gives byte-identical
JSON and PNG files, whatever the number of worker processes.
"""
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detectron_lib.structures.masks import (
    bitmap_tight_box,
    bitmap_to_polygon,
    bitmap_to_rle,
    polygons_to_bitmap,
)
from detectron_lib.utils.io import write_json_atomic

# Bump when the generator's output changes, so stale datasets on disk are regenerated.
GENERATOR_VERSION = 2

SHAPE_CATEGORIES = ("circle", "square", "triangle", "star", "hexagon", "ellipse")

# Star tips clockwise from the tip nearest to straight up (stars of the keypoint variant are
# rotated by less than 30 degrees, so that tip is always identifiable).
STAR_KEYPOINT_NAMES = (
    "tip_top", "tip_upper_right", "tip_lower_right", "tip_lower_left", "tip_upper_left",
)
STAR_KEYPOINT_FLIP_MAP = (
    ("tip_upper_right", "tip_upper_left"),
    ("tip_lower_right", "tip_lower_left"),
)
STAR_SKELETON = ((1, 2), (2, 3), (3, 4), (4, 5), (5, 1))  # 1-based, COCO's convention
# Tips are sharp, well-defined points: a tolerance between COCO's eyes (0.025) and
# shoulders (0.079).
STAR_KEYPOINT_OKS_SIGMAS = (0.05,) * 5

IMAGE_SIDE_RANGE = (160, 320)
INSTANCE_SIZE_RANGE = (8, 128)
KEYPOINT_STAR_SIZE_RANGE = (24, 128)   # big enough for the tips to be many pixels wide
STAR_INNER_RADIUS = 0.45               # inner vertices' radius, relative to the tips'
KEYPOINT_RADIUS = 0.75                 # keypoint on each tip's axis, relative to the tip radius
MAX_KEYPOINT_STAR_ANGLE = math.radians(30)

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
MARKER_FILE = "generation.json"


@dataclass(frozen=True)
class Shape:
    """One shape to paint.

    center: (x, y) in image pixels; size: circumscribed diameter in pixels (side length for
    squares); angle: clockwise rotation in radians; aspect: minor/major axis ratio (ellipses);
    color: (r, g, b); annotated: False for unlabeled occluders.
    """

    category: str
    center: tuple
    size: float
    angle: float = 0.0
    aspect: float = 1.0
    color: tuple = (255, 255, 255)
    annotated: bool = True


def _rotated(points, angle, center):
    """Rotate (V, 2) offsets clockwise (y points down) by ``angle`` and translate."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y], axis=1)


def _radial(radii, count, start=0.0):
    """Offsets at ``count`` angles clockwise from straight up, with the given radii."""
    angles = start + 2 * math.pi * np.arange(count) / count
    return np.stack([radii * np.sin(angles), -radii * np.cos(angles)], axis=1)


def shape_polygon(shape):
    """Vertices of ``shape`` as (V, 2) float64 image pixels, rounded to 0.01 px.

    Rounding first means the polygon written to JSON rasterizes to the very pixels painted.
    """
    half = shape.size / 2.0
    if shape.category == "circle":
        offsets = _radial(np.full(48, half), 48)
    elif shape.category == "ellipse":
        offsets = _radial(np.full(48, half), 48) * np.array([shape.aspect, 1.0])
    elif shape.category == "square":
        offsets = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * half
    elif shape.category == "triangle":
        offsets = _radial(np.full(3, half), 3)
    elif shape.category == "hexagon":
        offsets = _radial(np.full(6, half), 6)
    elif shape.category == "star":
        radii = np.tile([half, half * STAR_INNER_RADIUS], 5)
        offsets = _radial(radii, 10)
    else:
        raise ValueError(f"unknown shape category {shape.category!r}; known: {SHAPE_CATEGORIES}")
    return np.round(_rotated(offsets, shape.angle, shape.center), 2)


def star_keypoints(shape):
    """(5, 2) float64: a point on each tip's axis, in STAR_KEYPOINT_NAMES order."""
    offsets = _radial(np.full(5, shape.size / 2.0 * KEYPOINT_RADIUS), 5)
    return np.round(_rotated(offsets, shape.angle, shape.center), 2)


def render_scene(background, shapes, categories, keypoints=False):
    """Paint ``shapes`` in order over ``background`` and annotate what stays visible.

    Args:
        background: (H, W, 3) uint8 RGB.
        shapes: Shapes, painted first to last (later ones occlude earlier ones).
        categories: category names; an annotation's category_id is the 1-based position.
        keypoints: whether to add the star-tip keypoints to each annotation.
    Returns:
        image: (H, W, 3) uint8 RGB.
        annotations: COCO annotation dicts without 'id' and 'image_id', in painting order,
            for the annotated, not fully hidden shapes.
    """
    height, width = background.shape[:2]
    image = background.copy()
    owner = np.zeros((height, width), dtype=np.int32)   # 1 + index of the topmost shape
    polygons, full_masks = [], []
    for index, shape in enumerate(shapes):
        polygon = shape_polygon(shape)
        mask = polygons_to_bitmap([polygon.ravel()], height, width).astype(bool)
        _paint(image, mask, shape)
        owner[mask] = index + 1
        polygons.append(polygon)
        full_masks.append(mask)

    annotations = []
    for index, shape in enumerate(shapes):
        if not shape.annotated:
            continue
        visible = owner == index + 1
        area = int(visible.sum())
        if area == 0:
            continue
        x1, y1, x2, y2 = (int(v) for v in bitmap_tight_box(visible))
        annotation = {
            "category_id": categories.index(shape.category) + 1,
            "segmentation": _visible_segmentation(polygons[index], full_masks[index], visible),
            "area": area,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "iscrowd": 0,
        }
        if keypoints:
            flat = _star_keypoint_annotation(shape, owner, index + 1)
            annotation["keypoints"] = flat
            annotation["num_keypoints"] = sum(1 for v in flat[2::3] if v > 0)
        annotations.append(annotation)
    return image, annotations


def _visible_segmentation(polygon, full_mask, visible):
    """The shape's own polygon when nothing hides or clips it; else a traced polygon or RLE."""
    height, width = visible.shape
    inside = (polygon[:, 0].min() >= 0 and polygon[:, 1].min() >= 0
              and polygon[:, 0].max() <= width and polygon[:, 1].max() <= height)
    if inside and np.array_equal(visible, full_mask):
        return [polygon.ravel().tolist()]
    traced = bitmap_to_polygon(visible)
    if traced is not None:
        return [traced]
    return bitmap_to_rle(visible)


def _star_keypoint_annotation(shape, owner, owner_id):
    """COCO [x, y, v] * 5: v=2 on the star's visible pixels, v=1 hidden, v=0 (0, 0) outside."""
    height, width = owner.shape
    flat = []
    for x, y in star_keypoints(shape):
        if not (0 <= x < width and 0 <= y < height):
            flat += [0, 0, 0]
        else:
            visibility = 2 if owner[int(y), int(x)] == owner_id else 1
            flat += [float(x), float(y), visibility]
    return flat


def _paint(image, mask, shape):
    """Fill ``mask`` with the shape's colour, shaded by a linear gradient across the shape."""
    box = bitmap_tight_box(mask)
    if box is None:
        return
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = mask[y1:y2, x1:x2]
    ys = np.arange(y1, y2, dtype=np.float32)[:, None] - shape.center[1]
    xs = np.arange(x1, x2, dtype=np.float32)[None, :] - shape.center[0]
    dx, dy = -math.sin(shape.angle), math.cos(shape.angle)   # the shape's own "down"
    shade = 1.0 + (0.35 / max(shape.size, 1.0)) * (xs * dx + ys * dy)
    colors = np.asarray(shape.color, dtype=np.float32) * shade[..., None]
    region = image[y1:y2, x1:x2]
    region[crop] = np.clip(colors[crop], 0, 255).astype(np.uint8)


def make_background(rng, height, width):
    """(H, W, 3) uint8 RGB: a random gradient plus texture (stripes, blotches or checks) and
    2x2-pixel grain noise (coarser grain keeps PNGs small and generation fast)."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * math.pi)
    ramp = xs * math.cos(theta) + ys * math.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    image = start + ramp[..., None] * (end - start)

    texture = rng.integers(0, 3)
    if texture == 0:      # stripes
        phi = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        wave = np.sin((2 * math.pi / period) * (xs * math.cos(phi) + ys * math.sin(phi)))
        image += wave[..., None] * rng.uniform(10, 45, size=3).astype(np.float32)
    elif texture == 1:    # low-frequency blotches: a coarse random grid, upsampled bilinearly
        grid = rng.integers(0, 256, size=(int(rng.integers(3, 9)),) * 2 + (3,), dtype=np.uint8)
        blotches = Image.fromarray(grid).resize((width, height), Image.BILINEAR)
        image += (np.asarray(blotches, dtype=np.float32) - 127.5) * (50 / 127.5)
    else:                 # checkerboard
        cell = rng.uniform(8, 40)
        checks = ((xs // cell + ys // cell) % 2) * 2 - 1
        image += checks[..., None] * rng.uniform(8, 30, size=3).astype(np.float32)
    grain = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32)
    grain = grain.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    image += grain * np.float32(rng.uniform(2, 14))
    return np.clip(image, 0, 255).astype(np.uint8)


def draw_clutter(rng, image):
    """Draw random lines and small blobs (not objects) onto an (H, W, 3) uint8 image in place."""
    height, width = image.shape[:2]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(2, 10)):
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        draw.line([(x0, y0), (x1, y1)], fill=_random_color(rng), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(2, 9)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(1.5, 4.5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_random_color(rng))
    image[...] = np.asarray(canvas)


def _random_color(rng):
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _random_shape(rng, category, height, width, size_range, annotated=True, upright=False):
    """A random shape centred in the image (it may stick out of it); ``upright`` limits the
    rotation to +-30 degrees (keypoint stars, whose top tip must stay identifiable)."""
    low, high = size_range
    # Uniform sizes: about a third of the visible instances are still COCO-small (< 32^2 px),
    # as in COCO; a log-uniform draw made two thirds small, too hard for CPU-sized training.
    size = float(rng.uniform(low, high))
    if upright:
        angle = rng.uniform(-MAX_KEYPOINT_STAR_ANGLE, MAX_KEYPOINT_STAR_ANGLE)
    elif category == "circle":
        angle = 0.0
    else:
        angle = rng.uniform(0, 2 * math.pi)
    return Shape(
        category=category,
        center=(float(rng.uniform(0, width)), float(rng.uniform(0, height))),
        size=size,
        angle=float(angle),
        aspect=float(rng.uniform(0.35, 0.75)) if category == "ellipse" else 1.0,
        color=_random_color(rng),
        annotated=annotated,
    )


def sample_scene(seed, index, keypoints=False):
    """Random scene for image ``index`` of the dataset with ``seed``.

    Returns (background (H, W, 3) uint8 with clutter, list of Shapes in painting order).
    """
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1,
                                                   size=2))
    background = make_background(rng, height, width)
    draw_clutter(rng, background)
    if keypoints:
        occluder_names = [c for c in SHAPE_CATEGORIES if c != "star"]
        shapes = [_random_shape(rng, "star", height, width, KEYPOINT_STAR_SIZE_RANGE,
                                upright=True)
                  for _ in range(rng.integers(1, 5))]
        shapes += [_random_shape(rng, occluder_names[rng.integers(len(occluder_names))],
                                 height, width, INSTANCE_SIZE_RANGE, annotated=False)
                   for _ in range(rng.integers(0, 4))]
        shapes = [shapes[i] for i in rng.permutation(len(shapes))]
    else:
        shapes = [_random_shape(rng, SHAPE_CATEGORIES[rng.integers(len(SHAPE_CATEGORIES))],
                                height, width, INSTANCE_SIZE_RANGE)
                  for _ in range(rng.integers(1, 9))]
    return background, shapes


def dataset_categories(keypoints):
    """Category names, in category-id order, of the plain or the keypoint variant."""
    return ("star",) if keypoints else SHAPE_CATEGORIES


def _generate_image(job):
    """Render, save and annotate one image. job: (seed, index, keypoints, image_dir)."""
    seed, index, keypoints, image_dir = job
    background, shapes = sample_scene(seed, index, keypoints)
    image, annotations = render_scene(background, shapes, dataset_categories(keypoints), keypoints)
    file_name = f"{index + 1:06d}.png"
    Image.fromarray(image).save(Path(image_dir) / file_name, compress_level=1)
    info = {"id": index + 1, "file_name": file_name,
            "height": int(image.shape[0]), "width": int(image.shape[1])}
    return info, annotations


def _coco_categories(keypoints):
    categories = []
    for category_id, name in enumerate(dataset_categories(keypoints), start=1):
        entry = {"id": category_id, "name": name, "supercategory": "shape"}
        if keypoints:
            entry["keypoints"] = list(STAR_KEYPOINT_NAMES)
            entry["skeleton"] = [list(pair) for pair in STAR_SKELETON]
        categories.append(entry)
    return categories


def generate_shapes_dataset(output_dir, num_images, seed, keypoints=False, workers=2):
    """Generate a shapes dataset into ``output_dir`` (images/*.png + annotations.json).

    Idempotent: if ``output_dir`` already holds a finished dataset made with the same
    parameters and generator version, it is reused. Generation happens in a temporary sibling
    directory renamed into place at the end, so an interrupted run never looks finished.

    Returns the path of annotations.json.
    """
    output_dir = Path(output_dir)
    params = {"generator_version": GENERATOR_VERSION, "num_images": int(num_images),
              "seed": int(seed), "keypoints": bool(keypoints)}
    if _is_finished(output_dir, params):
        return output_dir / ANNOTATION_FILE

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp",
                                    dir=output_dir.parent))
    staging.chmod(0o755)   # mkdtemp makes it private; the dataset is meant to be shared
    try:
        image_dir = staging / IMAGE_DIR
        image_dir.mkdir()
        jobs = [(seed, index, keypoints, str(image_dir)) for index in range(num_images)]
        if workers > 1 and num_images > 50 and "fork" in multiprocessing.get_all_start_methods():
            # fork: the children only use numpy, PIL and pycocotools, and need no
            # `if __name__ == "__main__"` guard in the caller's script.
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                results = pool.map(_generate_image, jobs, chunksize=25)
        else:
            results = [_generate_image(job) for job in jobs]

        images, annotations = [], []
        for info, image_annotations in results:
            images.append(info)
            for annotation in image_annotations:
                annotations.append({"id": len(annotations) + 1, "image_id": info["id"],
                                    **annotation})
        split = "shapes_kp" if keypoints else "shapes"
        coco = {
            "info": {"description": f"synthetic {split} dataset", **params},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": _coco_categories(keypoints),
        }
        with open(staging / ANNOTATION_FILE, "w") as f:
            json.dump(coco, f, separators=(",", ":"))
        write_json_atomic(staging / MARKER_FILE, params)
        _move_into_place(staging, output_dir, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir / ANNOTATION_FILE


def _is_finished(output_dir, params):
    try:
        with open(output_dir / MARKER_FILE) as f:
            return json.load(f) == params and (output_dir / ANNOTATION_FILE).is_file()
    except (OSError, ValueError):
        return False


def _move_into_place(staging, output_dir, params):
    """Rename the finished staging dir onto ``output_dir``, replacing a stale or partial one.

    If another process finished the same dataset first, keep theirs.
    """
    if output_dir.exists():
        if _is_finished(output_dir, params):
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".stale",
                                      dir=output_dir.parent))
        os.replace(output_dir, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, output_dir)
    except OSError:
        if not _is_finished(output_dir, params):
            raise
