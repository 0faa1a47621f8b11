// RoIPool (Detectron's RoIPoolF; torchvision.ops.roi_pool) forward/backward on CPU.
//
// A bin is the integer pixel range [floor(p * bin), ceil((p + 1) * bin)) of the RoI whose
// corners are rounded to feature pixels (RoI at least 1x1); the output is the bin's maximum
// and the argmax (pixel index within the H x W plane, -1 for an empty bin) routes the
// gradient. Forward threads split the RoIs. When the map has many RoIs for its size the
// forward reads a channels-last copy, so each bin pixel updates the running max of all
// channels in one vectorized pass; otherwise it scans the (N, C, H, W) planes. Backward
// threads split the channels, so each owns a disjoint slice of the input gradient.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "roi_sampling.h"
#include "simd.h"

namespace detectron {

namespace {

// Bins of one RoI: corners rounded to feature pixels, RoI at least 1x1 (with the +1).
template <typename T>
void roi_pool_bins(const T* box, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
                   int64_t height, int64_t width, PoolBins& rows, PoolBins& cols) {
  const int64_t x1 = std::lround(box[0] * spatial_scale);
  const int64_t y1 = std::lround(box[1] * spatial_scale);
  const int64_t x2 = std::lround(box[2] * spatial_scale);
  const int64_t y2 = std::lround(box[3] * spatial_scale);
  const int64_t roi_w = std::max<int64_t>(x2 - x1 + 1, 1);
  const int64_t roi_h = std::max<int64_t>(y2 - y1 + 1, 1);
  rows.build(y1, pooled_h, height, static_cast<T>(roi_h) / static_cast<T>(pooled_h));
  cols.build(x1, pooled_w, width, static_cast<T>(roi_w) / static_cast<T>(pooled_w));
}

// input: (N, H, W, C) if channels_last else (N, C, H, W).
template <typename T>
void roi_pool_forward_impl(const T* input, bool channels_last, const T* rois, int64_t num_rois,
                           int64_t channels, int64_t height, int64_t width, T spatial_scale,
                           int64_t pooled_h, int64_t pooled_w, T* output, int32_t* argmax) {
  const int64_t bins = pooled_h * pooled_w;
  at::parallel_for(0, num_rois, 1, [&](int64_t first, int64_t last) {
    PoolBins rows, cols;
    std::vector<T> best(channels_last ? channels : 0);
    std::vector<int32_t> best_index(channels_last ? channels : 0);
    for (int64_t r = first; r < last; ++r) {
      const T* roi = rois + r * 5;
      roi_pool_bins(roi + 1, spatial_scale, pooled_h, pooled_w, height, width, rows, cols);
      const int64_t b = static_cast<int64_t>(roi[0]);
      T* out = output + r * channels * bins;
      int32_t* arg = argmax + r * channels * bins;
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        const int64_t h0 = rows.start[ph], h1 = rows.end[ph];
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          const int64_t w0 = cols.start[pw], w1 = cols.end[pw];
          const int64_t bin = ph * pooled_w + pw;
          const bool empty = h1 <= h0 || w1 <= w0;
          const T initial = empty ? T(0) : std::numeric_limits<T>::lowest();
          if (channels_last) {
            std::fill(best.begin(), best.end(), initial);
            std::fill(best_index.begin(), best_index.end(), -1);
            const T* image = input + b * height * width * channels;
            for (int64_t h = h0; h < h1; ++h) {
              for (int64_t w = w0; w < w1; ++w) {
                max_update(channels, image + (h * width + w) * channels,
                           static_cast<int32_t>(h * width + w), best.data(), best_index.data());
              }
            }
            for (int64_t c = 0; c < channels; ++c) {
              out[c * bins + bin] = best[c];
              arg[c * bins + bin] = best_index[c];
            }
            continue;
          }
          for (int64_t c = 0; c < channels; ++c) {
            const T* plane = input + (b * channels + c) * height * width;
            T best_value = initial;
            int32_t best_at = -1;
            for (int64_t h = h0; h < h1; ++h) {
              for (int64_t w = w0; w < w1; ++w) {
                if (plane[h * width + w] > best_value) {
                  best_value = plane[h * width + w];
                  best_at = static_cast<int32_t>(h * width + w);
                }
              }
            }
            out[c * bins + bin] = best_value;
            arg[c * bins + bin] = best_at;
          }
        }
      }
    }
  });
}

template <typename T>
void roi_pool_backward_impl(const T* grad, const int32_t* argmax, const T* rois,
                            int64_t num_rois, int64_t channels, int64_t plane_size,
                            int64_t bins, T* grad_input) {
  at::parallel_for(0, channels, 1, [&](int64_t c_first, int64_t c_last) {
    for (int64_t r = 0; r < num_rois; ++r) {
      const int64_t b = static_cast<int64_t>(rois[r * 5]);
      for (int64_t c = c_first; c < c_last; ++c) {
        T* plane = grad_input + (b * channels + c) * plane_size;
        const T* g = grad + (r * channels + c) * bins;
        const int32_t* arg = argmax + (r * channels + c) * bins;
        for (int64_t k = 0; k < bins; ++k) {
          if (arg[k] >= 0) {
            plane[arg[k]] += g[k];
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward(const at::Tensor& input,
                                                    const at::Tensor& rois,
                                                    double spatial_scale, int64_t pooled_h,
                                                    int64_t pooled_w) {
  check_rois(input, rois, "roi_pool");
  check_batch_indices(rois, input.size(0), "roi_pool");
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  at::Tensor output = at::zeros({num_rois, channels, pooled_h, pooled_w}, input.options());
  at::Tensor argmax = at::full({num_rois, channels, pooled_h, pooled_w}, -1,
                               input.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  // Channels-last pays when the RoIs' bins cover the map several times over (the copy is
  // one pass over it); a large map with few RoIs is scanned in place.
  const bool channels_last = input.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      num_rois * pooled_h * pooled_w * 8 >= input.size(0) * input.size(2) * input.size(3);
  const at::Tensor input_c =
      channels_last ? input.permute({0, 2, 3, 1}).contiguous() : input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_forward", [&] {
    roi_pool_forward_impl<scalar_t>(
        input_c.data_ptr<scalar_t>(), channels_last, rois_c.data_ptr<scalar_t>(), num_rois, channels,
        input.size(2), input.size(3), static_cast<scalar_t>(spatial_scale), pooled_h,
        pooled_w, output.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois,
                             const at::Tensor& argmax, int64_t batch_size, int64_t channels,
                             int64_t height, int64_t width) {
  TORCH_CHECK(grad.sizes() == argmax.sizes() && argmax.scalar_type() == at::kInt,
              "roi_pool backward: grad ", grad.sizes(), " and int32 argmax ",
              argmax.sizes(), " must have the same shape");
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0) {
    return grad_input;
  }
  check_batch_indices(rois, batch_size, "roi_pool backward");
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor argmax_c = argmax.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_pool_backward", [&] {
    roi_pool_backward_impl<scalar_t>(
        grad_c.data_ptr<scalar_t>(), argmax_c.data_ptr<int32_t>(),
        rois_c.data_ptr<scalar_t>(), rois.size(0), channels, height * width,
        grad.size(2) * grad.size(3), grad_input.data_ptr<scalar_t>());
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(detectron, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward);
  m.impl("_roi_pool_backward", &roi_pool_backward);
}

} // namespace detectron
