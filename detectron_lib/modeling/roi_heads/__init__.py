"""RoI heads; importing the package registers the instance-head kinds (masks, then
keypoints: the order a model runs them in)."""
import detectron_lib.modeling.roi_heads.mask_head  # noqa: F401
import detectron_lib.modeling.roi_heads.keypoint_head  # noqa: F401
