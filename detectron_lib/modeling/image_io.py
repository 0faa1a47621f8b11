"""The detector's image contract, owned by one module every detector holds (``model.io``).

Images enter a detector as a list of (3, H, W) tensors of BGR pixel values in 0..255 (uint8
or float), each of its own size, and detections leave it in the pixels of those images. In
between, ``DetectorIO``:

- resizes an image to TEST.SCALE / TEST.MAX_SIZE when the caller has not (the data loader
  resizes in its workers and says by how much; ``Predictor`` and TTA pass the original),
- normalizes (PIXEL_ORDER, PIXEL_MEANS, PIXEL_STDS) and zero-pads the batch to a multiple of
  the coarsest FPN stride (zero is the pixel mean after normalization, as in Detectron),
- maps results back: boxes divided by the resize factor (with MODEL.RESCALE_PER_AXIS, as
  detectron2's detector_postprocess: boxes and keypoints scaled by the original / resized
  width and height, boxes clipped to the original image and the empty ones dropped), soft
  masks pasted into the original image and binarized (MRCNN.THRESH_BINARIZE, LEGACY_PASTE).

Training, dataset evaluation, ``Predictor``, ``detectron infer`` and test-time augmentation
all go through it; none of them redoes a step.
"""
import torch
from torch import nn

from detectron_lib.data.transforms import (
    compute_resize_scale,
    image_array,
    image_tensor,
    resize_image,
    resized_size,
)
from detectron_lib.modeling.roi_heads.mask_head import paste_mask_probs


def normalize_image(image, pixel_means, pixel_stds=(1.0, 1.0, 1.0), channel_order="BGR"):
    """(3, H, W) BGR pixel values (any dtype) -> float32 (3, H, W) in ``channel_order``
    ('BGR' or 'RGB') with ``pixel_means`` subtracted and divided by ``pixel_stds`` (both
    given in ``channel_order``: PIXEL_MEANS, PIXEL_STDS, PIXEL_ORDER)."""
    if channel_order == "RGB":
        image = image.flip(0)
    means = torch.as_tensor(pixel_means, dtype=torch.float32, device=image.device).view(3, 1, 1)
    stds = torch.as_tensor(pixel_stds, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image.to(torch.float32) - means) / stds


def pad_to_batch(images, size_divisibility=0):
    """Zero-pad (3, H_i, W_i) tensors into one (B, 3, H, W) batch.

    H and W are the largest sizes, rounded up to a multiple of ``size_divisibility`` when it
    is > 1 (the coarsest FPN stride), so every feature level divides evenly.
    """
    max_height = max(image.shape[1] for image in images)
    max_width = max(image.shape[2] for image in images)
    if size_divisibility > 1:
        max_height = -(-max_height // size_divisibility) * size_divisibility
        max_width = -(-max_width // size_divisibility) * size_divisibility
    batch = images[0].new_zeros((len(images), images[0].shape[0], max_height, max_width))
    for slot, image in zip(batch, images):
        slot[:, :image.shape[1], :image.shape[2]].copy_(image)
    return batch


class DetectorIO(nn.Module):
    """Resize, normalize and pad images for a detector; map its results back to the images.

    pixel_means, pixel_stds, channel_order: PIXEL_MEANS, PIXEL_STDS, PIXEL_ORDER.
    test_scale, test_max_size: TEST.SCALE, TEST.MAX_SIZE (for images not resized already).
    size_divisibility: pad multiple (FPN.COARSEST_STRIDE with FPN, else 0).
    mask_thresh, legacy_paste: MRCNN.THRESH_BINARIZE, MRCNN.LEGACY_PASTE.
    rescale_per_axis: MODEL.RESCALE_PER_AXIS (see the module docstring; the heads then give
    keypoints in resized-image pixels too).
    It has no weights: a checkpoint never holds it.
    """

    def __init__(self, pixel_means, pixel_stds=(1.0, 1.0, 1.0), channel_order="BGR",
                 test_scale=800, test_max_size=1333, size_divisibility=0, mask_thresh=0.5,
                 legacy_paste=False, rescale_per_axis=False):
        super().__init__()
        self.pixel_means = tuple(float(m) for m in pixel_means)
        self.pixel_stds = tuple(float(s) for s in pixel_stds)
        self.channel_order = channel_order
        self.test_scale = test_scale
        self.test_max_size = test_max_size
        self.size_divisibility = int(size_divisibility)
        self.mask_thresh = mask_thresh
        self.legacy_paste = legacy_paste
        self.rescale_per_axis = rescale_per_axis

    def resize(self, image, target_size=None, max_size=None):
        """(3, H, W) image -> (resized image, scale) at ``target_size`` / ``max_size`` (default
        TEST.SCALE / TEST.MAX_SIZE), by the same 8-bit bilinear resize as training: a float
        image that changes size is rounded to 8 bits first; one that keeps it is returned."""
        target_size = target_size or self.test_scale
        max_size = max_size or self.test_max_size
        height, width = image.shape[1:]
        scale = compute_resize_scale(height, width, target_size, max_size)
        if resized_size(height, width, scale) == (height, width):
            return image, scale
        if image.is_floating_point():
            image = image.round().clamp(0, 255)
        resized = image_tensor(resize_image(image_array(image), scale))
        return resized.to(image.device), scale

    def batch(self, images):
        """[(3, H_i, W_i)] pixel values -> (normalized, padded (B, 3, H, W) float32 batch,
        [(H_i, W_i)] sizes of the unpadded images)."""
        normalized = [normalize_image(image, self.pixel_means, self.pixel_stds, self.channel_order)
                      for image in images]
        return pad_to_batch(normalized, self.size_divisibility), [tuple(i.shape[1:]) for i in images]

    def prepare(self, images, scales=None, original_sizes=None, training=False):
        """The model's input side: (batch, image sizes, scales, original sizes or None).

        Images resized already come with their ``scales`` (and ``original_sizes`` when the
        caller knows them); without ``scales`` each image is an original, resized here to
        TEST.SCALE, which ``training`` refuses: training images come resized."""
        if scales is not None:
            return (*self.batch(images), list(scales), original_sizes)
        if training:
            raise ValueError("training images come resized, with their scales")
        original_sizes = [tuple(image.shape[1:]) for image in images]
        resized, scales = zip(*(self.resize(image) for image in images))
        return (*self.batch(resized), list(scales), original_sizes)

    def postprocess(self, results, scales, original_sizes=None):
        """Results [Instances] in resized-image pixels -> boxes in original-image pixels and,
        when ``original_sizes`` are known and the results have ``mask_probs``, ``masks``
        (N, H, W) bool pasted into the original images."""
        out = []
        for result, scale, size in zip(results, scales, original_sizes or [None] * len(results)):
            if self.rescale_per_axis and size is not None:
                result = _rescaled_per_axis(result, size)
            else:
                result = result[:]
                result.boxes = result.boxes / scale
            if size is not None and result.has("mask_probs"):
                result.masks = self.paste_masks(result, size)
            out.append(result)
        return out

    def paste_masks(self, detections, image_size):
        """(N, H, W) bool masks of ``detections`` (boxes in the pixels of an image of
        ``image_size``, with ``mask_probs``)."""
        return paste_mask_probs(detections, *image_size, self.mask_thresh, self.legacy_paste)


def _rescaled_per_axis(result, size):
    """detectron2's detector_postprocess of one image's results (resized-image pixels, the
    continuous box geometry) onto its original ``size``."""
    (height, width), (resized_height, resized_width) = size, result.image_size
    scale_x, scale_y = width / resized_width, height / resized_height
    result = result[:]
    result.boxes = (result.boxes * result.boxes.tensor.new_tensor([scale_x, scale_y] * 2)).clip(
        height, width)
    if result.has("keypoints"):
        keypoints = result.keypoints.clone()
        keypoints[..., 0] *= scale_x
        keypoints[..., 1] *= scale_y
        result.keypoints = keypoints
    return result[result.boxes.nonempty()]


def detector_io_from_config(cfg):
    """The DetectorIO of a finalized config."""
    return DetectorIO(cfg.PIXEL_MEANS, cfg.PIXEL_STDS, cfg.PIXEL_ORDER, cfg.TEST.SCALE,
                      cfg.TEST.MAX_SIZE, int(cfg.FPN.COARSEST_STRIDE) if cfg.FPN.FPN_ON else 0,
                      cfg.MRCNN.THRESH_BINARIZE, cfg.MRCNN.LEGACY_PASTE, cfg.MODEL.RESCALE_PER_AXIS)
