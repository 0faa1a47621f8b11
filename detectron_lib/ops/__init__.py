"""Detection ops: the Python face of the compiled kernels in kernels/.

CPU tensors run C++ kernels registered as torch custom ops (torch.ops.detectron.*, with
autograd and fake implementations, so they work under torch.compile and torch.export);
CUDA tensors run torchvision's kernels. set_backend("reference") (or the environment
variable DETECTRON_OPS=reference) switches CPU tensors to the pure-PyTorch reference
implementations of detectron_lib.ops.reference. If the kernels are not built, importing
this package warns and falls back to the references.
"""
from detectron_lib.ops._backend import KERNELS_ERROR, get_backend, set_backend
from detectron_lib.ops.boxes import batched_nms, box_iou, box_voting, nms, soft_nms
from detectron_lib.ops.masks import paste_masks
from detectron_lib.ops.pooling import max_pool2d
from detectron_lib.ops.roi_ops import (
    boxes_to_rois,
    multilevel_roi_align,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)

if KERNELS_ERROR is None:
    from detectron_lib.ops import _registrations  # noqa: F401  (autograd + fake kernels)

__all__ = [
    "KERNELS_ERROR",
    "batched_nms",
    "box_iou",
    "box_voting",
    "boxes_to_rois",
    "get_backend",
    "max_pool2d",
    "multilevel_roi_align",
    "nms",
    "paste_masks",
    "ps_roi_align",
    "ps_roi_pool",
    "roi_align",
    "roi_pool",
    "set_backend",
    "soft_nms",
]
