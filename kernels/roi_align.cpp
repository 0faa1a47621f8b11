// RoIAlign forward/backward on CPU, single-level and multi-level (FPN).
//
// The sampling taps of a RoI are computed once and shared by all channels (see
// roi_sampling.h). Each feature level is read in one of two layouts:
//  - channels-last (N, H, W, C) copy: one bilinear tap is a contiguous run over channels
//    (a vectorized axpy). Pays when the level has many RoIs for its size.
//  - planar, the input's own (N, C, H, W): scalar taps per channel, no copy. Pays for a
//    large level with few RoIs (FPN's P2), where the copy would cost more than the taps.
// forward: threads split the RoIs; a channels-last RoI accumulates its bins in a
// (bins, C) buffer, then transposes it into the (K, C, PH, PW) output.
// backward: threads split the channels, so each thread owns a disjoint slice of the
// input gradient and no atomics or per-thread copies are needed.
// Multi-level: one call over a list of feature maps with a level index per RoI, writing
// one output; single-level RoIAlign is the one-level case.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "roi_sampling.h"
#include "simd.h"

namespace detectron {

namespace {

// One feature map (or its gradient) as the kernels read it.
template <typename T>
struct LevelData {
  T* data;  // (N, H, W, C) if channels_last, else (N, C, H, W); contiguous
  int64_t height;
  int64_t width;
  T scale;
  bool channels_last;
};

// Channels-last pays when the taps of the level's RoIs outnumber its pixels: the copy
// costs about one pass over N*H*W pixels per channel, planar taps a scalar load per tap
// (about 9 taps per bin at sampling ratio 2).
bool prefer_channels_last(int64_t rois_on_level, int64_t bins, int64_t batch, int64_t height,
                          int64_t width) {
  return rois_on_level * bins * 8 >= batch * height * width;
}

// Number of RoIs on each level.
std::vector<int64_t> rois_per_level(const c10::optional<at::Tensor>& roi_levels,
                                    int64_t num_rois, size_t num_levels) {
  std::vector<int64_t> counts(num_levels, 0);
  if (!roi_levels) {
    counts[0] = num_rois;
    return counts;
  }
  const at::Tensor levels = roi_levels->contiguous();
  const int64_t* data = levels.data_ptr<int64_t>();
  for (int64_t r = 0; r < num_rois; ++r) {
    TORCH_CHECK(data[r] >= 0 && data[r] < static_cast<int64_t>(num_levels),
                "multilevel_roi_align: level index ", data[r], " of RoI ", r,
                " is outside [0, ", num_levels, ")");
    ++counts[data[r]];
  }
  return counts;
}

template <typename T>
struct RoiTaps {
  AxisTaps<T> rows;
  AxisTaps<T> cols;

  void build(const T* box, const LevelData<T>& level, int64_t pooled_h, int64_t pooled_w,
             int64_t sampling_ratio, bool aligned) {
    const RoiGeometry<T> g(box, level.scale, pooled_h, pooled_w, sampling_ratio, aligned);
    rows.build(g.start_h, g.bin_h, pooled_h, g.grid_h, level.height);
    cols.build(g.start_w, g.bin_w, pooled_w, g.grid_w, level.width);
  }
};

template <typename T>
void forward_impl(const std::vector<LevelData<T>>& levels, const T* rois,
                  const int64_t* roi_levels, int64_t num_rois, int64_t channels,
                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                  T* output) {
  const int64_t bins = pooled_h * pooled_w;
  at::parallel_for(0, num_rois, 1, [&](int64_t first, int64_t last) {
    RoiTaps<T> taps;
    std::vector<T> acc(bins * channels);
    for (int64_t r = first; r < last; ++r) {
      const T* roi = rois + r * 5;
      const LevelData<T>& level = levels[roi_levels ? roi_levels[r] : 0];
      taps.build(roi + 1, level, pooled_h, pooled_w, sampling_ratio, aligned);
      T* out = output + r * channels * bins;
      if (!level.channels_last) {
        const T* image = level.data +
            static_cast<int64_t>(roi[0]) * channels * level.height * level.width;
        for (int64_t c = 0; c < channels; ++c) {
          const T* plane = image + c * level.height * level.width;
          for (int64_t ph = 0; ph < pooled_h; ++ph) {
            for (int64_t pw = 0; pw < pooled_w; ++pw) {
              T sum = 0;
              for (int64_t i = taps.rows.begin[ph]; i < taps.rows.begin[ph + 1]; ++i) {
                const T* row = plane + taps.rows.index[i] * level.width;
                T row_sum = 0;
                for (int64_t j = taps.cols.begin[pw]; j < taps.cols.begin[pw + 1]; ++j) {
                  row_sum += taps.cols.weight[j] * row[taps.cols.index[j]];
                }
                sum += taps.rows.weight[i] * row_sum;
              }
              out[c * bins + ph * pooled_w + pw] = sum;
            }
          }
        }
        continue;
      }
      const T* image = level.data +
          static_cast<int64_t>(roi[0]) * level.height * level.width * channels;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          T* bin_acc = acc.data() + (ph * pooled_w + pw) * channels;
          for (int64_t i = taps.rows.begin[ph]; i < taps.rows.begin[ph + 1]; ++i) {
            const T* row = image + taps.rows.index[i] * level.width * channels;
            for (int64_t j = taps.cols.begin[pw]; j < taps.cols.begin[pw + 1]; ++j) {
              axpy(channels, taps.rows.weight[i] * taps.cols.weight[j],
                   row + taps.cols.index[j] * channels, bin_acc);
            }
          }
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t b = 0; b < bins; ++b) {
          out[c * bins + b] = acc[b * channels + c];
        }
      }
    }
  });
}

template <typename T>
void backward_impl(const std::vector<LevelData<T>>& grad_levels, const T* rois,
                   const int64_t* roi_levels, int64_t num_rois, int64_t channels,
                   int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                   bool aligned, const T* grad_output) {
  const int64_t bins = pooled_h * pooled_w;
  // Chunks of at least 16 channels keep each axpy long enough to vectorize.
  at::parallel_for(0, channels, 16, [&](int64_t c_first, int64_t c_last) {
    const int64_t span = c_last - c_first;
    RoiTaps<T> taps;
    std::vector<T> grad_bins(bins * span);  // this RoI's output gradient, (bins, span)
    for (int64_t r = 0; r < num_rois; ++r) {
      const T* roi = rois + r * 5;
      const LevelData<T>& level = grad_levels[roi_levels ? roi_levels[r] : 0];
      taps.build(roi + 1, level, pooled_h, pooled_w, sampling_ratio, aligned);
      const T* go = grad_output + r * channels * bins;
      if (!level.channels_last) {
        T* image = level.data +
            static_cast<int64_t>(roi[0]) * channels * level.height * level.width;
        for (int64_t c = c_first; c < c_last; ++c) {
          T* plane = image + c * level.height * level.width;
          for (int64_t ph = 0; ph < pooled_h; ++ph) {
            for (int64_t pw = 0; pw < pooled_w; ++pw) {
              const T g = go[c * bins + ph * pooled_w + pw];
              for (int64_t i = taps.rows.begin[ph]; i < taps.rows.begin[ph + 1]; ++i) {
                T* row = plane + taps.rows.index[i] * level.width;
                const T g_row = g * taps.rows.weight[i];
                for (int64_t j = taps.cols.begin[pw]; j < taps.cols.begin[pw + 1]; ++j) {
                  row[taps.cols.index[j]] += g_row * taps.cols.weight[j];
                }
              }
            }
          }
        }
        continue;
      }
      for (int64_t c = c_first; c < c_last; ++c) {
        for (int64_t b = 0; b < bins; ++b) {
          grad_bins[b * span + (c - c_first)] = go[c * bins + b];
        }
      }
      T* image = level.data +
          static_cast<int64_t>(roi[0]) * level.height * level.width * channels + c_first;
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          const T* g = grad_bins.data() + (ph * pooled_w + pw) * span;
          for (int64_t i = taps.rows.begin[ph]; i < taps.rows.begin[ph + 1]; ++i) {
            T* row = image + taps.rows.index[i] * level.width * channels;
            for (int64_t j = taps.cols.begin[pw]; j < taps.cols.begin[pw + 1]; ++j) {
              axpy(span, taps.rows.weight[i] * taps.cols.weight[j], g,
                   row + taps.cols.index[j] * channels);
            }
          }
        }
      }
    }
  });
}

// Checks the level list, its scales and the shape of the per-RoI level indices (their
// range is checked while counting the RoIs of each level).
void check_levels(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                  const at::Tensor& roi_levels, at::ArrayRef<double> scales) {
  TORCH_CHECK(!features.empty(), "multilevel_roi_align: no feature levels given");
  TORCH_CHECK(features.size() == scales.size(), "multilevel_roi_align: ", features.size(),
              " feature levels but ", scales.size(), " spatial scales");
  TORCH_CHECK(roi_levels.dim() == 1 && roi_levels.size(0) == rois.size(0) &&
                  roi_levels.scalar_type() == at::kLong,
              "multilevel_roi_align: levels must be an int64 tensor of shape (",
              rois.size(0), ",), got ", roi_levels.scalar_type(), " ", roi_levels.sizes());
  for (const auto& f : features) {
    check_rois(f, rois, "multilevel_roi_align");
    TORCH_CHECK(f.size(0) == features[0].size(0) && f.size(1) == features[0].size(1),
                "multilevel_roi_align: every level must have the same batch size and "
                "channels, got ", features[0].sizes(), " and ", f.sizes());
  }
}

at::Tensor forward_levels(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                          const c10::optional<at::Tensor>& roi_levels,
                          at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                          int64_t sampling_ratio, bool aligned) {
  const int64_t num_rois = rois.size(0);
  const int64_t channels = features[0].size(1);
  check_batch_indices(rois, features[0].size(0), "roi_align");
  at::Tensor output =
      at::empty({num_rois, channels, pooled_h, pooled_w}, features[0].options());
  if (output.numel() == 0) {
    return output.zero_();
  }
  const std::vector<int64_t> counts = rois_per_level(roi_levels, num_rois, features.size());
  std::vector<at::Tensor> layouts;  // per level: (N, H, W, C) or (N, C, H, W), contiguous
  std::vector<bool> channels_last;
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    channels_last.push_back(f.is_contiguous(at::MemoryFormat::ChannelsLast) ||
                            prefer_channels_last(counts[l], pooled_h * pooled_w, f.size(0),
                                                 f.size(2), f.size(3)));
    layouts.push_back(channels_last[l] ? f.permute({0, 2, 3, 1}).contiguous() : f.contiguous());
  }
  const at::Tensor rois_c = rois.contiguous();
  const at::Tensor levels_c = roi_levels ? roi_levels->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(features[0].scalar_type(), "roi_align_forward", [&] {
    std::vector<LevelData<scalar_t>> views;
    for (size_t l = 0; l < layouts.size(); ++l) {
      views.push_back({layouts[l].data_ptr<scalar_t>(), features[l].size(2),
                       features[l].size(3), static_cast<scalar_t>(scales[l]),
                       channels_last[l]});
    }
    forward_impl<scalar_t>(views, rois_c.data_ptr<scalar_t>(),
                           roi_levels ? levels_c.data_ptr<int64_t>() : nullptr, num_rois,
                           channels, pooled_h, pooled_w, sampling_ratio, aligned,
                           output.data_ptr<scalar_t>());
  });
  return output;
}

// Returns one (N, C, H_l, W_l) gradient per level.
std::vector<at::Tensor> backward_levels(
    const at::Tensor& grad, const at::Tensor& rois, const c10::optional<at::Tensor>& roi_levels,
    at::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
    bool aligned, int64_t batch_size, int64_t channels, at::IntArrayRef heights,
    at::IntArrayRef widths) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "roi_align backward: grad must be (", rois.size(0), ", ", channels, ", ",
              pooled_h, ", ", pooled_w, "), got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == rois.scalar_type(),
              "roi_align backward: grad and rois must have the same dtype");
  const std::vector<int64_t> counts = rois_per_level(roi_levels, rois.size(0), heights.size());
  std::vector<at::Tensor> grads;  // per level: (N, H, W, C) or (N, C, H, W)
  std::vector<bool> channels_last;
  for (size_t l = 0; l < heights.size(); ++l) {
    channels_last.push_back(prefer_channels_last(counts[l], pooled_h * pooled_w, batch_size,
                                                 heights[l], widths[l]));
    grads.push_back(channels_last[l]
                        ? at::zeros({batch_size, heights[l], widths[l], channels}, grad.options())
                        : at::zeros({batch_size, channels, heights[l], widths[l]}, grad.options()));
  }
  if (grad.numel() > 0) {
    check_batch_indices(rois, batch_size, "roi_align backward");
    const at::Tensor grad_c = grad.contiguous();
    const at::Tensor rois_c = rois.contiguous();
    const at::Tensor levels_c = roi_levels ? roi_levels->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward", [&] {
      std::vector<LevelData<scalar_t>> views;
      for (size_t l = 0; l < grads.size(); ++l) {
        views.push_back({grads[l].data_ptr<scalar_t>(), heights[l], widths[l],
                         static_cast<scalar_t>(scales[l]), channels_last[l]});
      }
      backward_impl<scalar_t>(views, rois_c.data_ptr<scalar_t>(),
                              roi_levels ? levels_c.data_ptr<int64_t>() : nullptr,
                              rois.size(0), channels, pooled_h, pooled_w, sampling_ratio,
                              aligned, grad_c.data_ptr<scalar_t>());
    });
  }
  for (size_t l = 0; l < grads.size(); ++l) {
    if (channels_last[l]) {
      grads[l] = grads[l].permute({0, 3, 1, 2}).contiguous();
    }
  }
  return grads;
}

at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& rois,
                             double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                             int64_t sampling_ratio, bool aligned) {
  check_rois(input, rois, "roi_align");
  return forward_levels({input}, rois, c10::nullopt, {spatial_scale}, pooled_h, pooled_w,
                        sampling_ratio, aligned);
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                              double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                              int64_t batch_size, int64_t channels, int64_t height,
                              int64_t width, int64_t sampling_ratio, bool aligned) {
  return backward_levels(grad, rois, c10::nullopt, {spatial_scale}, pooled_h, pooled_w,
                         sampling_ratio, aligned, batch_size, channels, {height}, {width})[0];
}

at::Tensor multilevel_roi_align_forward(at::TensorList features, const at::Tensor& rois,
                                        const at::Tensor& roi_levels,
                                        at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                        int64_t pooled_w, int64_t sampling_ratio,
                                        bool aligned) {
  const std::vector<at::Tensor> levels(features.begin(), features.end());
  check_levels(levels, rois, roi_levels, spatial_scales);
  return forward_levels(levels, rois, roi_levels, spatial_scales, pooled_h, pooled_w,
                        sampling_ratio, aligned);
}

std::vector<at::Tensor> multilevel_roi_align_backward(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& roi_levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w,
    int64_t sampling_ratio, bool aligned, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths) {
  TORCH_CHECK(heights.size() == spatial_scales.size() && widths.size() == heights.size(),
              "multilevel_roi_align backward: one height, width and scale per level");
  return backward_levels(grad, rois, roi_levels, spatial_scales, pooled_h, pooled_w,
                         sampling_ratio, aligned, batch_size, channels, heights, widths);
}

} // namespace

TORCH_LIBRARY_IMPL(detectron, CPU, m) {
  m.impl("roi_align", &roi_align_forward);
  m.impl("_roi_align_backward", &roi_align_backward);
  m.impl("multilevel_roi_align", &multilevel_roi_align_forward);
  m.impl("_multilevel_roi_align_backward", &multilevel_roi_align_backward);
}

} // namespace detectron
