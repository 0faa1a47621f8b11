// Position-sensitive RoIAlign and RoIPool (R-FCN) forward/backward on CPU.
//
// Output channel c_out of bin (ph, pw) reads input channel (c_out * PH + ph) * PW + pw, so
// the input has C_out * PH * PW channels. Geometry follows torchvision.ops.ps_roi_align /
// ps_roi_pool. Forward threads split the RoIs. Backward threads split the input channels:
// each input channel belongs to one (c_out, ph, pw), so the slices are disjoint.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "roi_sampling.h"

namespace detectron {

namespace {

// PS-RoIAlign geometry (torchvision): always half-pixel aligned, no minimum RoI size.
template <typename T>
RoiGeometry<T> ps_align_geometry(const T* box, T scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio) {
  return RoiGeometry<T>(box, scale, pooled_h, pooled_w, sampling_ratio, /*aligned=*/true);
}

// PS-RoIPool geometry (torchvision): corners rounded, RoI at least 1x1, no +1.
template <typename T>
void ps_pool_bins(const T* box, T scale, int64_t pooled_h, int64_t pooled_w, int64_t height,
                  int64_t width, PoolBins& rows, PoolBins& cols) {
  const int64_t x1 = std::lround(box[0] * scale);
  const int64_t y1 = std::lround(box[1] * scale);
  const int64_t x2 = std::lround(box[2] * scale);
  const int64_t y2 = std::lround(box[3] * scale);
  const int64_t roi_w = std::max<int64_t>(x2 - x1, 1);
  const int64_t roi_h = std::max<int64_t>(y2 - y1, 1);
  rows.build(y1, pooled_h, height, static_cast<T>(roi_h) / static_cast<T>(pooled_h));
  cols.build(x1, pooled_w, width, static_cast<T>(roi_w) / static_cast<T>(pooled_w));
}

// Sum of weight * plane over the bin's row x column taps.
template <typename T>
inline T sample_bin(const T* plane, int64_t width, const AxisTaps<T>& rows,
                    const AxisTaps<T>& cols, int64_t ph, int64_t pw) {
  T sum = 0;
  for (int64_t i = rows.begin[ph]; i < rows.begin[ph + 1]; ++i) {
    T row_sum = 0;
    const T* row = plane + rows.index[i] * width;
    for (int64_t j = cols.begin[pw]; j < cols.begin[pw + 1]; ++j) {
      row_sum += cols.weight[j] * row[cols.index[j]];
    }
    sum += rows.weight[i] * row_sum;
  }
  return sum;
}

template <typename T>
void ps_roi_align_forward_impl(const T* input, const T* rois, int64_t num_rois,
                               int64_t channels, int64_t height, int64_t width, T scale,
                               int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                               T* output) {
  const int64_t bins = pooled_h * pooled_w;
  const int64_t channels_out = channels / bins;
  at::parallel_for(0, num_rois, 1, [&](int64_t first, int64_t last) {
    AxisTaps<T> rows, cols;
    for (int64_t r = first; r < last; ++r) {
      const T* roi = rois + r * 5;
      const auto g = ps_align_geometry(roi + 1, scale, pooled_h, pooled_w, sampling_ratio);
      rows.build(g.start_h, g.bin_h, pooled_h, g.grid_h, height);
      cols.build(g.start_w, g.bin_w, pooled_w, g.grid_w, width);
      const T* image = input + static_cast<int64_t>(roi[0]) * channels * height * width;
      T* out = output + r * channels_out * bins;
      for (int64_t c_out = 0; c_out < channels_out; ++c_out) {
        for (int64_t ph = 0; ph < pooled_h; ++ph) {
          for (int64_t pw = 0; pw < pooled_w; ++pw) {
            const int64_t bin = ph * pooled_w + pw;
            const T* plane = image + (c_out * bins + bin) * height * width;
            out[c_out * bins + bin] = sample_bin(plane, width, rows, cols, ph, pw);
          }
        }
      }
    }
  });
}

template <typename T>
void ps_roi_align_backward_impl(const T* grad, const T* rois, int64_t num_rois,
                                int64_t channels, int64_t height, int64_t width, T scale,
                                int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                T* grad_input) {
  const int64_t bins = pooled_h * pooled_w;
  const int64_t channels_out = channels / bins;
  at::parallel_for(0, channels, 1, [&](int64_t c_first, int64_t c_last) {
    AxisTaps<T> rows, cols;
    for (int64_t r = 0; r < num_rois; ++r) {
      const T* roi = rois + r * 5;
      const auto g = ps_align_geometry(roi + 1, scale, pooled_h, pooled_w, sampling_ratio);
      rows.build(g.start_h, g.bin_h, pooled_h, g.grid_h, height);
      cols.build(g.start_w, g.bin_w, pooled_w, g.grid_w, width);
      T* image = grad_input + static_cast<int64_t>(roi[0]) * channels * height * width;
      for (int64_t c = c_first; c < c_last; ++c) {
        const int64_t bin = c % bins;
        const int64_t ph = bin / pooled_w;
        const int64_t pw = bin % pooled_w;
        const T g_bin = grad[(r * channels_out + c / bins) * bins + bin];
        T* plane = image + c * height * width;
        for (int64_t i = rows.begin[ph]; i < rows.begin[ph + 1]; ++i) {
          T* row = plane + rows.index[i] * width;
          const T g_row = g_bin * rows.weight[i];
          for (int64_t j = cols.begin[pw]; j < cols.begin[pw + 1]; ++j) {
            row[cols.index[j]] += g_row * cols.weight[j];
          }
        }
      }
    }
  });
}

template <typename T>
void ps_roi_pool_forward_impl(const T* input, const T* rois, int64_t num_rois,
                              int64_t channels, int64_t height, int64_t width, T scale,
                              int64_t pooled_h, int64_t pooled_w, T* output) {
  const int64_t bins = pooled_h * pooled_w;
  const int64_t channels_out = channels / bins;
  at::parallel_for(0, num_rois, 1, [&](int64_t first, int64_t last) {
    PoolBins rows, cols;
    for (int64_t r = first; r < last; ++r) {
      const T* roi = rois + r * 5;
      ps_pool_bins(roi + 1, scale, pooled_h, pooled_w, height, width, rows, cols);
      const T* image = input + static_cast<int64_t>(roi[0]) * channels * height * width;
      T* out = output + r * channels_out * bins;
      for (int64_t c_out = 0; c_out < channels_out; ++c_out) {
        for (int64_t ph = 0; ph < pooled_h; ++ph) {
          for (int64_t pw = 0; pw < pooled_w; ++pw) {
            const int64_t bin = ph * pooled_w + pw;
            const T* plane = image + (c_out * bins + bin) * height * width;
            const int64_t area =
                (rows.end[ph] - rows.start[ph]) * (cols.end[pw] - cols.start[pw]);
            T sum = 0;
            for (int64_t h = rows.start[ph]; h < rows.end[ph]; ++h) {
              for (int64_t w = cols.start[pw]; w < cols.end[pw]; ++w) {
                sum += plane[h * width + w];
              }
            }
            out[c_out * bins + bin] = area > 0 ? sum / static_cast<T>(area) : T(0);
          }
        }
      }
    }
  });
}

template <typename T>
void ps_roi_pool_backward_impl(const T* grad, const T* rois, int64_t num_rois,
                               int64_t channels, int64_t height, int64_t width, T scale,
                               int64_t pooled_h, int64_t pooled_w, T* grad_input) {
  const int64_t bins = pooled_h * pooled_w;
  const int64_t channels_out = channels / bins;
  at::parallel_for(0, channels, 1, [&](int64_t c_first, int64_t c_last) {
    PoolBins rows, cols;
    for (int64_t r = 0; r < num_rois; ++r) {
      const T* roi = rois + r * 5;
      ps_pool_bins(roi + 1, scale, pooled_h, pooled_w, height, width, rows, cols);
      T* image = grad_input + static_cast<int64_t>(roi[0]) * channels * height * width;
      for (int64_t c = c_first; c < c_last; ++c) {
        const int64_t bin = c % bins;
        const int64_t ph = bin / pooled_w;
        const int64_t pw = bin % pooled_w;
        const int64_t area =
            (rows.end[ph] - rows.start[ph]) * (cols.end[pw] - cols.start[pw]);
        if (area <= 0) {
          continue;
        }
        const T g = grad[(r * channels_out + c / bins) * bins + bin] / static_cast<T>(area);
        T* plane = image + c * height * width;
        for (int64_t h = rows.start[ph]; h < rows.end[ph]; ++h) {
          for (int64_t w = cols.start[pw]; w < cols.end[pw]; ++w) {
            plane[h * width + w] += g;
          }
        }
      }
    }
  });
}

void check_ps_input(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_h,
                    int64_t pooled_w, const char* op) {
  check_rois(input, rois, op);
  check_batch_indices(rois, input.size(0), op);
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0 && input.size(1) % (pooled_h * pooled_w) == 0, op,
              ": input channels (", input.size(1), ") must be a multiple of output_size ",
              pooled_h, "x", pooled_w);
}

at::Tensor ps_roi_align_forward(const at::Tensor& input, const at::Tensor& rois,
                                double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                int64_t sampling_ratio) {
  check_ps_input(input, rois, pooled_h, pooled_w, "ps_roi_align");
  const int64_t channels_out = input.size(1) / (pooled_h * pooled_w);
  at::Tensor output =
      at::zeros({rois.size(0), channels_out, pooled_h, pooled_w}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ps_roi_align_forward", [&] {
    ps_roi_align_forward_impl<scalar_t>(
        input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), rois.size(0),
        input.size(1), input.size(2), input.size(3), static_cast<scalar_t>(spatial_scale),
        pooled_h, pooled_w, sampling_ratio, output.data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor ps_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, int64_t batch_size, int64_t channels,
                                 int64_t height, int64_t width) {
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0) {
    return grad_input;
  }
  check_batch_indices(rois, batch_size, "ps_roi_align backward");
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "ps_roi_align_backward", [&] {
    ps_roi_align_backward_impl<scalar_t>(
        grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), rois.size(0), channels,
        height, width, static_cast<scalar_t>(spatial_scale), pooled_h, pooled_w,
        sampling_ratio, grad_input.data_ptr<scalar_t>());
  });
  return grad_input;
}

at::Tensor ps_roi_pool_forward(const at::Tensor& input, const at::Tensor& rois,
                               double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  check_ps_input(input, rois, pooled_h, pooled_w, "ps_roi_pool");
  const int64_t channels_out = input.size(1) / (pooled_h * pooled_w);
  at::Tensor output =
      at::zeros({rois.size(0), channels_out, pooled_h, pooled_w}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ps_roi_pool_forward", [&] {
    ps_roi_pool_forward_impl<scalar_t>(
        input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), rois.size(0),
        input.size(1), input.size(2), input.size(3), static_cast<scalar_t>(spatial_scale),
        pooled_h, pooled_w, output.data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor ps_roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois,
                                double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                int64_t batch_size, int64_t channels, int64_t height,
                                int64_t width) {
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0) {
    return grad_input;
  }
  check_batch_indices(rois, batch_size, "ps_roi_pool backward");
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "ps_roi_pool_backward", [&] {
    ps_roi_pool_backward_impl<scalar_t>(
        grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), rois.size(0), channels,
        height, width, static_cast<scalar_t>(spatial_scale), pooled_h, pooled_w,
        grad_input.data_ptr<scalar_t>());
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(detectron, CPU, m) {
  m.impl("ps_roi_align", &ps_roi_align_forward);
  m.impl("_ps_roi_align_backward", &ps_roi_align_backward);
  m.impl("ps_roi_pool", &ps_roi_pool_forward);
  m.impl("_ps_roi_pool_backward", &ps_roi_pool_backward);
}

} // namespace detectron
