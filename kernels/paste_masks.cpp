// Pastes N box-relative masks into N full-image planes on CPU.
//
// Semantics are those of torch.nn.functional.grid_sample (bilinear, zero padding,
// align_corners=False) evaluated at every image pixel centre, as in detectron2's
// paste_masks_in_image on GPU: pixel (px, py) samples the mask at
//   u = ((px + 0.5 - x1) / (x2 - x1) * 2 - 1 + 1) * M_w / 2 - 0.5   (v likewise),
// so the mask covers the box with sub-pixel precision and fades out over about half a
// mask cell outside it. Boxes of zero or negative width or height paste nothing.
// Threads split the masks; each mask only touches the pixel rows/columns whose sample
// falls within one cell of the mask.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace detectron {

namespace {

// Bilinear taps of one image axis into one mask axis: two cells and weights per pixel,
// weight 0 for a cell outside the mask.
template <typename T>
struct PasteTaps {
  std::vector<int64_t> low;
  std::vector<T> w_low, w_high;
  int64_t first = 0, last = 0;  // pixels [first, last) have a non-zero tap

  void build(T box_start, T box_end, int64_t image_size, int64_t mask_size) {
    low.assign(image_size, 0);
    w_low.assign(image_size, T(0));
    w_high.assign(image_size, T(0));
    first = image_size;
    last = 0;
    for (int64_t p = 0; p < image_size; ++p) {
      // Same expressions as the grid_sample reference: normalized grid, then unnormalize.
      const T grid = (static_cast<T>(p) + T(0.5) - box_start) / (box_end - box_start) * T(2) - T(1);
      const T u = ((grid + T(1)) * static_cast<T>(mask_size) - T(1)) / T(2);
      const T cell = std::floor(u);
      if (!(cell >= -1 && cell < static_cast<T>(mask_size))) {
        continue;  // both cells outside the mask (or NaN)
      }
      const int64_t c = static_cast<int64_t>(cell);
      const T frac = u - cell;
      low[p] = c;
      w_low[p] = c >= 0 ? T(1) - frac : T(0);
      w_high[p] = c + 1 < mask_size ? frac : T(0);
      first = std::min(first, p);
      last = p + 1;
    }
  }

  T value_low(const T* line, int64_t p) const { return w_low[p] == 0 ? T(0) : line[low[p]]; }
  T value_high(const T* line, int64_t p) const {
    return w_high[p] == 0 ? T(0) : line[low[p] + 1];
  }
};

template <typename T>
void paste_impl(const T* masks, const T* boxes, int64_t n, int64_t mask_h, int64_t mask_w,
                int64_t height, int64_t width, T* out) {
  at::parallel_for(0, n, 1, [&](int64_t first, int64_t last) {
    PasteTaps<T> rows, cols;
    std::vector<T> row_values(width);
    for (int64_t k = first; k < last; ++k) {
      const T* box = boxes + 4 * k;
      if (!(box[2] > box[0] && box[3] > box[1])) {
        continue;
      }
      rows.build(box[1], box[3], height, mask_h);
      cols.build(box[0], box[2], width, mask_w);
      const T* mask = masks + k * mask_h * mask_w;
      T* plane = out + k * height * width;
      for (int64_t py = rows.first; py < rows.last; ++py) {
        const T wy0 = rows.w_low[py], wy1 = rows.w_high[py];
        const T* line0 = mask + std::max<int64_t>(rows.low[py], 0) * mask_w;
        const T* line1 = mask + std::min<int64_t>(rows.low[py] + 1, mask_h - 1) * mask_w;
        for (int64_t px = cols.first; px < cols.last; ++px) {
          T value = 0;
          if (wy0 != 0) {
            value += wy0 * (cols.w_low[px] * cols.value_low(line0, px) +
                            cols.w_high[px] * cols.value_high(line0, px));
          }
          if (wy1 != 0) {
            value += wy1 * (cols.w_low[px] * cols.value_low(line1, px) +
                            cols.w_high[px] * cols.value_high(line1, px));
          }
          plane[py * width + px] = value;
        }
      }
    }
  });
}

at::Tensor paste_masks(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_height,
                       int64_t image_width) {
  TORCH_CHECK(masks.dim() == 3, "paste_masks: masks must be (N, M, M), got ", masks.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "paste_masks: boxes must be (", masks.size(0), ", 4), got ", boxes.sizes());
  TORCH_CHECK(masks.scalar_type() == boxes.scalar_type() &&
                  at::isFloatingType(masks.scalar_type()),
              "paste_masks: masks and boxes must both be float or both double");
  TORCH_CHECK(image_height >= 0 && image_width >= 0, "paste_masks: negative image size ",
              image_height, "x", image_width);
  const int64_t n = masks.size(0);
  at::Tensor out = at::zeros({n, image_height, image_width}, masks.options());
  if (out.numel() == 0 || masks.size(1) == 0 || masks.size(2) == 0) {
    return out;
  }
  const at::Tensor masks_c = masks.contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES(masks.scalar_type(), "paste_masks", [&] {
    paste_impl<scalar_t>(masks_c.data_ptr<scalar_t>(), boxes_c.data_ptr<scalar_t>(), n,
                         masks.size(1), masks.size(2), image_height, image_width,
                         out.data_ptr<scalar_t>());
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(detectron, CPU, m) {
  m.impl("paste_masks", &paste_masks);
}

} // namespace detectron
