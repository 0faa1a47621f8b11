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
    out = np.asarray(draw_detections(image, boxes, [1, 2], [0.9, 0.3], ["circle", "square"],
                                     masks=masks, keypoints=kps, skeleton=[(0, 1)]))
    assert out.shape == (60, 80, 3)
    # The kept box's bottom edge has its class colour; the dropped box (score 0.3) is not drawn.
    assert tuple(out[50, 25]) == class_color(1)
    assert out[45, 60].sum() == 0 and out[50, 70].sum() == 0
    # The kept mask is tinted, the untouched background stays black.
    assert out[35, 25].sum() > 0
    assert out[2, 2].sum() == 0
