// Schemas of the detectron:: custom ops and the Python module detectron_lib._C.
//
// Backward ops are separate ops (autograd is attached in detectron_lib/ops). Shape
// arguments of backward ops are SymInt so the ops trace with dynamic shapes.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(detectron, m) {
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, "
        "SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("multilevel_roi_align(Tensor[] features, Tensor rois, Tensor levels, "
        "float[] spatial_scales, int pooled_height, int pooled_width, int sampling_ratio, "
        "bool aligned) -> Tensor");
  m.def("_multilevel_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, "
        "float[] spatial_scales, int pooled_height, int pooled_width, int sampling_ratio, "
        "bool aligned, SymInt batch_size, SymInt channels, SymInt[] heights, "
        "SymInt[] widths) -> Tensor[]");
  m.def("roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width) -> (Tensor, Tensor)");
  m.def("_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor");
  m.def("ps_roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio) -> Tensor");
  m.def("_ps_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, int sampling_ratio, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor");
  m.def("ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width) -> Tensor");
  m.def("_ps_roi_pool_backward(Tensor grad, Tensor rois, float spatial_scale, "
        "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, "
        "SymInt height, SymInt width) -> Tensor");
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) "
        "-> (Tensor, Tensor)");
  m.def("_max_pool2d_backward(Tensor grad, Tensor argmax, SymInt height, SymInt width) "
        "-> Tensor");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("soft_nms(Tensor boxes, Tensor scores, int method, float sigma, float iou_threshold, "
        "float score_threshold) -> (Tensor, Tensor)");
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("paste_masks(Tensor masks, Tensor boxes, int image_height, int image_width) -> Tensor");
}

// Importing detectron_lib._C loads this library, which registers the ops above. The module
// itself is empty; a plain CPython module keeps pybind11 and torch/extension.h (slow to
// compile) out of the build.
static PyModuleDef detectron_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "Compiled CPU kernels of detectron_lib.ops (registered as torch.ops.detectron)", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&detectron_module);
}
