// Bilinear sampling grid of RoIAlign, factored per axis.
//
// RoIAlign averages grid_h x grid_w bilinear samples per output bin. A bilinear weight is
// the product of a row weight and a column weight, and a sample outside the feature map
// contributes zero whichever axis it leaves on, so the bin's weight of feature pixel
// (row, col) is (sum of its row weights) * (sum of its column weights). AxisTaps holds,
// per bin along one axis, the distinct rows (or columns) read and their summed weights,
// already divided by the grid size. A bin then reads |rows| x |cols| pixels, usually 3x3
// for a 2x2 grid instead of the 16 reads of the sample-by-sample loop, and the taps are
// computed once per RoI and shared by every channel.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace detectron {

template <typename T>
struct AxisTaps {
  std::vector<int64_t> index;   // feature row (or column) of each tap
  std::vector<T> weight;        // summed bilinear weight / grid size
  std::vector<int64_t> begin;   // taps of bin p are [begin[p], begin[p + 1])

  // start: RoI start in feature coordinates; bin_size: RoI extent / bins; grid: samples
  // per bin along this axis (0 reads nothing); size: feature height or width.
  void build(T start, T bin_size, int64_t bins, int64_t grid, int64_t size) {
    index.clear();
    weight.clear();
    begin.assign(bins + 1, 0);
    for (int64_t p = 0; p < bins; ++p) {
      begin[p] = static_cast<int64_t>(index.size());
      for (int64_t g = 0; g < grid; ++g) {
        // Same expression and order of operations as torchvision's kernel.
        T pos = start + static_cast<T>(p) * bin_size +
            static_cast<T>(g + .5f) * bin_size / static_cast<T>(grid);
        if (!(pos >= T(-1.0) && pos <= static_cast<T>(size))) {
          continue;  // outside the map (or NaN): the sample is zero
        }
        if (pos <= 0) {
          pos = 0;
        }
        int64_t low = static_cast<int64_t>(pos);
        int64_t high;
        if (low >= size - 1) {
          high = low = size - 1;
          pos = static_cast<T>(low);
        } else {
          high = low + 1;
        }
        const T frac = pos - static_cast<T>(low);
        add(begin[p], low, (T(1) - frac) / static_cast<T>(grid));
        add(begin[p], high, frac / static_cast<T>(grid));
      }
    }
    begin[bins] = static_cast<int64_t>(index.size());
  }

 private:
  void add(int64_t first, int64_t where, T w) {
    for (size_t k = first; k < index.size(); ++k) {
      if (index[k] == where) {
        weight[k] += w;
        return;
      }
    }
    index.push_back(where);
    weight.push_back(w);
  }
};

// The geometry of one RoI on one feature map, as torchvision's roi_align defines it.
template <typename T>
struct RoiGeometry {
  T start_h, start_w, bin_h, bin_w;
  int64_t grid_h, grid_w;

  // box: (x1, y1, x2, y2) in image pixels. aligned=false is Detectron's RoIAlign (no
  // half-pixel shift, RoI at least 1x1 feature pixel); aligned=true shifts by -0.5 pixel.
  RoiGeometry(const T* box, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
              int64_t sampling_ratio, bool aligned) {
    const T offset = aligned ? T(0.5) : T(0);
    start_w = box[0] * spatial_scale - offset;
    start_h = box[1] * spatial_scale - offset;
    T width = box[2] * spatial_scale - offset - start_w;
    T height = box[3] * spatial_scale - offset - start_h;
    if (!aligned) {
      width = std::max(width, T(1));
      height = std::max(height, T(1));
    }
    bin_h = height / static_cast<T>(pooled_h);
    bin_w = width / static_cast<T>(pooled_w);
    grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(height, pooled_h);
    grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(width, pooled_w);
  }

  // torchvision: ceil(extent / bins) samples, none for an empty or inverted RoI.
  static int64_t adaptive_grid(T extent, int64_t bins) {
    const T g = std::ceil(extent / static_cast<T>(bins));
    return g > 0 ? static_cast<int64_t>(g) : 0;
  }
};

// Integer pixel range of each bin along one axis, clipped to [0, size].
struct PoolBins {
  std::vector<int64_t> start, end;

  // bin_size in the kernel's dtype, like torchvision, so the floor/ceil edges agree.
  template <typename T>
  void build(int64_t roi_start, int64_t bins, int64_t size, T bin_size) {
    start.resize(bins);
    end.resize(bins);
    for (int64_t p = 0; p < bins; ++p) {
      const int64_t s =
          static_cast<int64_t>(std::floor(static_cast<T>(p) * bin_size)) + roi_start;
      const int64_t e =
          static_cast<int64_t>(std::ceil(static_cast<T>(p + 1) * bin_size)) + roi_start;
      start[p] = std::min(std::max<int64_t>(s, 0), size);
      end[p] = std::min(std::max<int64_t>(e, 0), size);
    }
  }
};

// Checks shared by the RoI ops: rois is (K, 5) of the input's dtype, batch indices valid.
inline void check_rois(const at::Tensor& input, const at::Tensor& rois, const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be (K, 5) [batch_index, x1, y1, x2, y2], got ", rois.sizes());
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(), op,
              ": input and rois must have the same dtype, got ", input.scalar_type(),
              " and ", rois.scalar_type());
  TORCH_CHECK(input.device().is_cpu() && rois.device().is_cpu(), op,
              ": the detectron CPU kernel got a non-CPU tensor");
}

// Checks every RoI's batch index against the batch size (before any parallel work).
inline void check_batch_indices(const at::Tensor& rois, int64_t batch_size, const char* op) {
  if (rois.numel() == 0) {
    return;
  }
  const at::Tensor index = rois.select(1, 0);
  const double low = index.min().item<double>();
  const double high = index.max().item<double>();
  TORCH_CHECK(low >= 0 && high < static_cast<double>(batch_size), op,
              ": RoI batch indices must lie in [0, ", batch_size, "), got [", low, ", ",
              high, "]");
}

} // namespace detectron
