"""Drawing detections: the pixels under a drawn box outline and a mask change, others do not."""
import numpy as np

from detectron_lib.inference.vis import class_color, draw_detections


def test_draws_box_mask_and_keypoints_above_threshold_only():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 40, 50], [50, 30, 70, 55]], dtype=np.float32)
    masks = np.zeros((2, 60, 80), dtype=bool)
    masks[0, 30:40, 20:30] = True
    masks[1, 40:50, 55:65] = True
    kps = np.array([[[15, 45, 1], [35, 45, 1]], [[60, 35, 1], [65, 40, 1]]], dtype=np.float32)
    out = np.asarray(draw_detections(image, boxes, [1, 2], [0.9, 0.3], {1: "circle", 2: "square"},
                                     masks=masks, keypoints=kps, skeleton=[(0, 1)]))
    assert out.shape == (60, 80, 3)
    # The kept box's bottom edge has its class colour; the dropped box (score 0.3) is not drawn.
    assert tuple(out[50, 25]) == class_color(1)
    assert out[45, 60].sum() == 0 and out[50, 70].sum() == 0
    # The kept mask is tinted, the untouched background stays black.
    assert out[35, 25].sum() > 0
    assert out[2, 2].sum() == 0


def test_keypoints_below_threshold_and_their_lines_are_not_drawn():
    """keypoint_thresh (Detectron's infer_simple: logit >= 2) hides low-scoring keypoints and
    every skeleton line touching one; the others are drawn."""
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 79, 59]], dtype=np.float32)
    kps = np.array([[[20, 30, 5.0], [60, 30, 0.5], [20, 50, 3.0]]], dtype=np.float32)
    out = np.asarray(draw_detections(image, boxes, [1], [0.9], {1: "star"}, keypoints=kps,
                                     skeleton=[(0, 1), (0, 2)], keypoint_thresh=2.0))
    assert out[30, 20].sum() > 0 and out[50, 20].sum() > 0   # drawn points
    assert out[40, 20].sum() > 0                              # line 0-2
    assert out[30, 60].sum() == 0 and out[30, 40].sum() == 0  # hidden point, no line 0-1
    every = np.asarray(draw_detections(image, boxes, [1], [0.9], {1: "star"}, keypoints=kps,
                                       skeleton=[(0, 1), (0, 2)]))
    assert every[30, 60].sum() > 0 and every[30, 40].sum() > 0
