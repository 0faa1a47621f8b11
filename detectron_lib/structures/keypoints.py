"""Keypoints in COCO's layout: (N, K, 3) float32 rows of (x, y, v) per instance.

x, y are continuous image pixels; v = 0 not labeled (then x = y = 0), 1 labeled but occluded,
2 labeled and visible.
"""
import numpy as np

from detectron_lib.errors import DatasetError


def flip_permutation(keypoint_names, flip_map):
    """Index permutation that swaps left/right keypoints under a horizontal flip.

    Args:
        keypoint_names: K names in the dataset's order.
        flip_map: pairs (name_a, name_b) that exchange places when the image is mirrored,
            e.g. ("left_eye", "right_eye"). Unpaired keypoints map to themselves.
    Returns:
        (K,) int64 ``perm`` such that ``flipped[:, k] = mirrored[:, perm[k]]``.
    """
    index = {name: k for k, name in enumerate(keypoint_names)}
    perm = np.arange(len(keypoint_names), dtype=np.int64)
    for a, b in flip_map:
        if a not in index or b not in index:
            raise DatasetError(
                f"keypoint flip map pair ({a!r}, {b!r}) names a keypoint that is not in "
                f"{list(keypoint_names)}; fix the dataset's keypoint_flip_map"
            )
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm


def flip_keypoints(keypoints, last_x, perm):
    """Mirror keypoints left-right in an image of ``width`` pixels and swap left/right names.

    Args:
        keypoints: (N, K, 3) float32 (x, y, v).
        last_x: the image's last x coordinate in the box convention (BoxConvention.last:
            width or, for Detectron's pixel indices, width - 1); x -> last_x - x.
        perm: (K,) int64 from ``flip_permutation``.
    Returns:
        (N, K, 3) float32; unlabeled keypoints (v = 0) stay at (0, 0).
    """
    flipped = np.array(keypoints, dtype=np.float32, copy=True)
    flipped[:, :, 0] = last_x - flipped[:, :, 0]
    flipped = flipped[:, perm, :]
    flipped[flipped[:, :, 2] == 0] = 0.0
    return flipped


def scale_keypoints(keypoints, scale):
    """Scale keypoint coordinates for an image resized by ``scale``; v is unchanged."""
    scaled = np.array(keypoints, dtype=np.float32, copy=True)
    scaled[:, :, :2] *= scale
    return scaled
