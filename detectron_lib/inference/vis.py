"""Drawing detections onto images (what ``detectron infer`` writes, like Detectron's
infer_simple): boxes with class name and score, masks as translucent fills with outlines,
keypoints as dots joined by the dataset's skeleton.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A fixed palette so a class keeps its colour across images.
_PALETTE = np.array([
    [0, 113, 188], [216, 82, 24], [236, 176, 31], [125, 46, 141], [118, 171, 47],
    [76, 189, 237], [161, 19, 46], [255, 0, 0], [255, 127, 0], [190, 190, 0],
    [0, 255, 0], [0, 0, 255], [170, 0, 255], [84, 84, 0], [84, 170, 0],
], dtype=np.uint8)


def class_color(class_id):
    return tuple(int(c) for c in _PALETTE[int(class_id) % len(_PALETTE)])


def draw_detections(image, boxes, classes, scores, class_names, masks=None, keypoints=None,
                    skeleton=(), score_thresh=0.7, keypoint_thresh=None):
    """Return a PIL RGB image with the detections scoring >= ``score_thresh`` drawn on it.

    image: (H, W, 3) uint8 RGB. boxes: (N, 4) x1y1x2y2 in image pixels. classes: (N,) class
    labels, named by ``class_names`` {label: name} (unnamed ones by their number). scores:
    (N,). masks: optional (N, H, W) bool.
    keypoints: optional (N, K, 3) with (x, y, score); skeleton: pairs of keypoint indices.
    keypoint_thresh: draw only keypoints (and lines between two such) whose score is >= it
    (Detectron's infer_simple: heatmap logit >= 2); None draws every keypoint.
    """
    boxes, classes, scores = (np.asarray(a) for a in (boxes, classes, scores))
    keep = np.flatnonzero(scores >= score_thresh)
    # Draw large objects first so small ones stay visible on top.
    areas = (boxes[keep, 2] - boxes[keep, 0]) * (boxes[keep, 3] - boxes[keep, 1])
    keep = keep[np.argsort(-areas, kind="stable")]

    canvas = np.asarray(image, dtype=np.uint8).copy()
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        for i in keep:
            color = np.array(class_color(classes[i]), dtype=np.float32)
            region = masks[i]
            canvas[region] = (0.55 * canvas[region] + 0.45 * color).astype(np.uint8)
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for i in keep:
        color = class_color(classes[i])
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        name = class_names.get(int(classes[i]), str(int(classes[i])))
        label = f"{name} {float(scores[i]):.2f}"
        tx1, ty1, tx2, ty2 = draw.textbbox((x1, y1), label, font=font)
        top = max(y1 - (ty2 - ty1) - 2, 0)
        draw.rectangle([x1, top, x1 + (tx2 - tx1) + 4, top + (ty2 - ty1) + 2], fill=color)
        draw.text((x1 + 2, top), label, fill=(255, 255, 255), font=font)
        if keypoints is not None:
            _draw_keypoints(draw, np.asarray(keypoints[i]), skeleton, color, keypoint_thresh)
    return out


def _draw_keypoints(draw, kps, skeleton, color, thresh=None, radius=3):
    shown = np.ones(len(kps), dtype=bool) if thresh is None else kps[:, 2] >= thresh
    for a, b in skeleton:
        if shown[a] and shown[b]:
            draw.line([tuple(kps[a, :2]), tuple(kps[b, :2])], fill=color, width=2)
    for x, y, _ in kps[shown]:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255), outline=color)
