"""Exported detectors (export.onnx) run by ONNX Runtime, called as the model is called.

``OnnxRuntimeDetector(path)([image]) -> [Instances]``: the same fields as the PyTorch model's
inference (boxes as Boxes in the model's convention, scores, classes; with mask heads
mask_probs and ``masks`` pasted into the image by the model's own paste, MRCNN.THRESH_BINARIZE
and LEGACY_PASTE as exported; with keypoint heads ``keypoints`` and ``keypoint_probs`` decoded
from the graph's heatmaps by the model's own heatmaps_to_keypoints, KRCNN.INFERENCE_MIN_SIZE
and NORMALIZED_KEYPOINT_SCORES as exported), so ``Predictor`` and ``detectron infer`` treat
both alike.
A weights file is told to be an ONNX model by its content (engine.checkpoint_formats'
``is_onnx_file``), not its suffix.
"""
import torch

from detectron_lib.engine.checkpoint import CheckpointError
from detectron_lib.modeling.roi_heads.keypoint_head import heatmaps_to_keypoints
from detectron_lib.modeling.roi_heads.mask_head import paste_mask_probs
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, Boxes
from detectron_lib.structures.instances import Instances


class OnnxRuntimeDetector:
    """An exported detector in an ONNX Runtime session on the CPU with ``threads`` threads
    (default: torch's), run image by image."""

    def __init__(self, path, threads=None):
        try:
            import onnxruntime
        except ImportError:
            raise CheckpointError(f"'{path}' is an ONNX model: running it needs onnxruntime "
                                  "(pip install -e '.[onnx]')") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(path), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as e:  # a truncated or foreign file: say which one
            raise CheckpointError(f"ONNX model '{path}' cannot be loaded ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1]}); export it again with "
                                  "`detectron export`") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if "detectron.box_plus_one" not in meta:
            raise CheckpointError(f"ONNX model '{path}' was not written by `detectron export` "
                                  "(no detectron.* metadata); export the model with it")
        self.path = str(path)
        self.convention = PIXEL_INDICES if meta["detectron.box_plus_one"] == "1" else CONTINUOUS
        self.mask_thresh = float(meta["detectron.mask_thresh"])
        self.legacy_paste = meta["detectron.legacy_paste"] == "1"
        self.keypoint_min_size = int(meta.get("detectron.keypoint_min_size", 0))
        self.keypoint_normalized_scores = meta.get("detectron.keypoint_normalized_scores") == "1"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images):
        """[(3, H, W) BGR uint8 (or float 0..255, rounded)] -> [Instances] in their pixels."""
        return [self._detect(image) for image in images]

    def _detect(self, image):
        if image.is_floating_point():
            image = image.round().clamp(0, 255)
        pixels = image.to("cpu", torch.uint8).contiguous().numpy()
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: pixels})))
        fields = {name: torch.from_numpy(value) for name, value in outputs.items()}
        fields["boxes"] = Boxes(fields["boxes"], self.convention)
        heatmaps = fields.pop("keypoint_heatmaps", None)
        if heatmaps is not None:  # decoded in the boxes, in the image's pixels, as the model does
            fields["keypoints"], fields["keypoint_probs"] = heatmaps_to_keypoints(
                heatmaps, fields["boxes"].tensor, self.keypoint_min_size,
                self.keypoint_normalized_scores)
        result = Instances(image.shape[1:], **fields)
        if result.has("mask_probs"):
            result.masks = paste_mask_probs(result, *image.shape[1:], self.mask_thresh,
                                            self.legacy_paste)
        return result
