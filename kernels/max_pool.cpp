// 2-D max-pooling of (N, C, H, W) float32 / bfloat16 maps on CPU, forward and backward:
// F.max_pool2d_with_indices (no dilation, floor output sizes) bit for bit, argmax included.
//
// PyTorch's CPU kernel scans each window row-major and keeps a value that is greater than
// the running maximum or NaN: the first maximum, the last NaN, and the first in-map pixel
// when all are -inf. Here the windows are pooled separably with the same rule, which picks
// the same pixel: first along each window row (left to right), then down the window's rows
// (top to bottom). Threads split the planes. The argmax is int32 (h * W + w within the
// plane); the backward adds each output gradient to its argmax pixel in output order, in
// the input's dtype, as PyTorch does (so bfloat16 sums round alike).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace detectron {

namespace {

// Geometry of the pooling. A batch of planes is pooled in a "phase" layout of its padded
// pixels: padded pixel (hp, wp) = (hq * stride_h + rp, wq * stride_w + r) of plane p lives in
// phase (r, rp) at (p * rows + hq) * cols + wq. Window (oh, ow)'s pixel (i, j) is then in
// phase (j % stride_w, i % stride_h) at (p * rows + oh + i / stride_h) * cols + ow + j /
// stride_w: a fixed offset for each (i, j), so every pass below is one flat loop over the
// batch (short map rows do not cut the vectors short), with outputs at ow >= out_width or
// oh >= out_height computed and dropped.
struct PoolShape {
  int64_t height, width, out_height, out_width;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int64_t rows, cols;  // per plane and phase: out_height + (kernel_h - 1) / stride_h, ...
};

// Per-thread buffers for `planes` planes; see pool_planes.
struct PoolBuffers {
  PoolBuffers(const PoolShape& s, int64_t planes)
      : phase_size(planes * s.rows * s.cols + (s.kernel_w - 1) / s.stride_w),
        row_size(planes * s.rows * s.cols + (s.kernel_h - 1) / s.stride_h * s.cols),
        phases(s.stride_w * s.stride_h * phase_size, -std::numeric_limits<float>::infinity()),
        row_max(s.stride_h * row_size, -std::numeric_limits<float>::infinity()),
        row_tap(s.stride_h * row_size, 0),
        best(planes * s.rows * s.cols),
        best_row_tap(best.size()),
        best_col_tap(best.size()) {}

  int64_t phase_size, row_size;
  std::vector<float> phases;         // phase (r, rp) at (r * stride_h + rp) * phase_size
  std::vector<float> row_max;        // window-row maxima, row phase rp at rp * row_size
  std::vector<int32_t> row_tap;      // their column j in the window
  std::vector<float> best;           // window maxima
  std::vector<int32_t> best_row_tap; // their (i, j) in the window
  std::vector<int32_t> best_col_tap;
};

inline float load_float(float v) {
  return v;
}

inline float load_float(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline void store_float(float v, float* out) {
  *out = v;
}

// The values are bfloat16 ones, so truncating is exact; NaN becomes c10's 0x7FC0, as in
// PyTorch's kernel (which rounds its float maximum back).
inline void store_float(float v, c10::BFloat16* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  out->x = v != v ? uint16_t{0x7FC0} : static_cast<uint16_t>(bits >> 16);
}

// Keeps value v with tap t where it beats the running (best, at): greater, or NaN.
inline __attribute__((always_inline)) void keep_max(float v, int32_t t, float& best,
                                                    int32_t& at) {
  const bool keep = v > best || v != v;
  best = keep ? v : best;
  at = keep ? t : at;
}

// phase[m] = row[m * stride + r - pad] as float for m in [0, cols), -inf outside the row.
// STRIDE > 0 fixes the stride at compile time (the strided loads then vectorize).
template <int STRIDE, typename T>
inline __attribute__((always_inline)) void split_row(const T* __restrict row, int64_t r,
                                                     const PoolShape& s,
                                                     float* __restrict phase) {
  const int64_t stride = STRIDE > 0 ? STRIDE : s.stride_w;
  const int64_t pad = s.pad_w, cols = s.cols;
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  // m * stride + r - pad in [0, width)  <=>  m in [m_lo, m_hi)
  const int64_t m_lo = std::min(r >= pad ? 0 : (pad - r + stride - 1) / stride, cols);
  const int64_t past = s.width + pad - r;
  const int64_t m_hi = std::clamp(past > 0 ? (past + stride - 1) / stride : 0, m_lo, cols);
  const T* src = row + r - pad;
  for (int64_t m = 0; m < m_lo; ++m) {
    phase[m] = kLowest;
  }
  for (int64_t m = m_lo; m < m_hi; ++m) {
    phase[m] = load_float(src[m * stride]);
  }
  for (int64_t m = m_hi; m < cols; ++m) {
    phase[m] = kLowest;
  }
}

// Pools `count` consecutive planes: (1) padded rows into the phase layout, (2) the maximum
// of each window row, over its columns left to right, (3) the maximum of those down the
// window's rows, (4) the outputs, the taps turned into in-map indices. A padding pixel is
// -inf, so it is kept only when all of the window is -inf and it is the first tap; the
// index is then clamped to the first in-map row and column, PyTorch's argmax there.
template <int STRIDE_W, typename T>
inline __attribute__((always_inline)) void pool_planes_body(
    const T* __restrict input, int64_t count, const PoolShape& s, T* __restrict output,
    int32_t* __restrict argmax, PoolBuffers& b) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  const int64_t sh = s.stride_h, sw = STRIDE_W > 0 ? STRIDE_W : s.stride_w;
  const int64_t cols = s.cols, n = count * s.rows * cols;
  float* __restrict phases = b.phases.data();
  for (int64_t p = 0; p < count; ++p) {
    for (int64_t hp = 0; hp < s.rows * sh; ++hp) {
      const int64_t h = hp - s.pad_h;
      for (int64_t r = 0; r < sw; ++r) {
        float* phase = phases + (r * sh + hp % sh) * b.phase_size + (p * s.rows + hp / sh) * cols;
        if (h < 0 || h >= s.height) {
          std::fill(phase, phase + cols, kLowest);
        } else {
          split_row<STRIDE_W>(input + (p * s.height + h) * s.width, r, s, phase);
        }
      }
    }
  }
  for (int64_t rp = 0; rp < sh; ++rp) {
    float* __restrict hv = b.row_max.data() + rp * b.row_size;
    int32_t* __restrict hj = b.row_tap.data() + rp * b.row_size;
    const float* __restrict first = phases + rp * b.phase_size;
    for (int64_t t = 0; t < n; ++t) {
      hv[t] = first[t];
      hj[t] = 0;
    }
    for (int64_t j = 1; j < s.kernel_w; ++j) {
      const float* __restrict src = phases + ((j % sw) * sh + rp) * b.phase_size + j / sw;
      for (int64_t t = 0; t < n; ++t) {
        keep_max(src[t], static_cast<int32_t>(j), hv[t], hj[t]);
      }
    }
  }
  float* __restrict best = b.best.data();
  int32_t* __restrict best_i = b.best_row_tap.data();
  int32_t* __restrict best_j = b.best_col_tap.data();
  for (int64_t u = 0; u < n; ++u) {
    best[u] = b.row_max[u];
    best_i[u] = 0;
    best_j[u] = b.row_tap[u];
  }
  for (int64_t i = 1; i < s.kernel_h; ++i) {
    const int64_t offset = (i % sh) * b.row_size + (i / sh) * cols;
    const float* __restrict hv = b.row_max.data() + offset;
    const int32_t* __restrict hj = b.row_tap.data() + offset;
    for (int64_t u = 0; u < n; ++u) {
      const bool keep = hv[u] > best[u] || hv[u] != hv[u];
      best[u] = keep ? hv[u] : best[u];
      best_i[u] = keep ? static_cast<int32_t>(i) : best_i[u];
      best_j[u] = keep ? hj[u] : best_j[u];
    }
  }
  const int32_t width = static_cast<int32_t>(s.width);
  for (int64_t p = 0; p < count; ++p) {
    for (int64_t oh = 0; oh < s.out_height; ++oh) {
      const int64_t u0 = (p * s.rows + oh) * cols;
      const int64_t o0 = (p * s.out_height + oh) * s.out_width;
      const int32_t h0 = static_cast<int32_t>(oh * sh - s.pad_h);
      for (int64_t ow = 0; ow < s.out_width; ++ow) {
        const int32_t w0 = static_cast<int32_t>(ow * sw - s.pad_w);
        store_float(best[u0 + ow], output + o0 + ow);
        argmax[o0 + ow] = std::max(h0 + best_i[u0 + ow], 0) * width +
            std::max(w0 + best_j[u0 + ow], 0);
      }
    }
  }
}

#define DETECTRON_POOL_PLANES(T)                                                         \
  DETECTRON_MULTI_ISA void pool_planes(const T* input, int64_t count, const PoolShape& s, \
                                       T* output, int32_t* argmax, PoolBuffers& b) {      \
    if (s.stride_w == 2) {                                                               \
      pool_planes_body<2>(input, count, s, output, argmax, b);                           \
    } else if (s.stride_w == 1) {                                                        \
      pool_planes_body<1>(input, count, s, output, argmax, b);                           \
    } else {                                                                             \
      pool_planes_body<0>(input, count, s, output, argmax, b);                           \
    }                                                                                    \
  }

DETECTRON_POOL_PLANES(float)
DETECTRON_POOL_PLANES(c10::BFloat16)

#undef DETECTRON_POOL_PLANES

// Calls f(float{}) or f(c10::BFloat16{}) for the (checked) float32 / bfloat16 dtype.
template <typename F>
void dispatch_pool_type(at::ScalarType dtype, F&& f) {
  if (dtype == at::kBFloat16) {
    f(c10::BFloat16{});
  } else {
    f(float{});
  }
}

int64_t pair_value(at::IntArrayRef values, int64_t i, const char* name) {
  TORCH_CHECK(values.size() == 2, "max_pool2d: ", name, " must have 2 values, got ",
              values.size());
  return values[i];
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward(const at::Tensor& input,
                                                      at::IntArrayRef kernel_size,
                                                      at::IntArrayRef stride,
                                                      at::IntArrayRef padding) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(),
              "max_pool2d: input must be a contiguous (N, C, H, W) tensor, got ",
              input.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
              "max_pool2d: input must be float32 or bfloat16, got ", input.scalar_type());
  PoolShape s;
  s.height = input.size(2);
  s.width = input.size(3);
  s.kernel_h = pair_value(kernel_size, 0, "kernel_size");
  s.kernel_w = pair_value(kernel_size, 1, "kernel_size");
  s.stride_h = pair_value(stride, 0, "stride");
  s.stride_w = pair_value(stride, 1, "stride");
  s.pad_h = pair_value(padding, 0, "padding");
  s.pad_w = pair_value(padding, 1, "padding");
  TORCH_CHECK(s.kernel_h > 0 && s.kernel_w > 0 && s.stride_h > 0 && s.stride_w > 0,
              "max_pool2d: kernel_size and stride must be positive");
  TORCH_CHECK(s.pad_h >= 0 && s.pad_w >= 0 && 2 * s.pad_h <= s.kernel_h &&
                  2 * s.pad_w <= s.kernel_w,
              "max_pool2d: padding must be non-negative and at most half the kernel size");
  TORCH_CHECK(s.height + 2 * s.pad_h >= s.kernel_h && s.width + 2 * s.pad_w >= s.kernel_w,
              "max_pool2d: the padded input ", input.sizes(), " is smaller than the kernel");
  TORCH_CHECK(s.height * s.width <= std::numeric_limits<int32_t>::max(),
              "max_pool2d: planes of more than 2^31 pixels are not supported");
  s.out_height = (s.height + 2 * s.pad_h - s.kernel_h) / s.stride_h + 1;
  s.out_width = (s.width + 2 * s.pad_w - s.kernel_w) / s.stride_w + 1;
  s.rows = s.out_height + (s.kernel_h - 1) / s.stride_h;
  s.cols = s.out_width + (s.kernel_w - 1) / s.stride_w;
  const int64_t planes = input.size(0) * input.size(1);
  at::Tensor output =
      at::empty({input.size(0), input.size(1), s.out_height, s.out_width}, input.options());
  at::Tensor argmax = at::empty(output.sizes(), input.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  const int64_t in_plane = s.height * s.width;
  const int64_t out_plane = s.out_height * s.out_width;
  // Batches of about 16K padded pixels (64 KB of phases) stay in the L2 cache.
  const int64_t padded_plane = s.rows * s.stride_h * s.cols * s.stride_w;
  const int64_t batch = std::clamp<int64_t>(16384 / padded_plane, 1, planes);
  dispatch_pool_type(input.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    int32_t* arg = argmax.data_ptr<int32_t>();
    at::parallel_for(0, planes, batch, [&](int64_t first, int64_t last) {
      PoolBuffers buffers(s, std::min(batch, last - first));
      for (int64_t p = first; p < last; p += batch) {
        pool_planes(in + p * in_plane, std::min(batch, last - p), s, out + p * out_plane,
                    arg + p * out_plane, buffers);
      }
    });
  });
  return {output, argmax};
}

at::Tensor max_pool2d_backward(const at::Tensor& grad, const at::Tensor& argmax, int64_t height,
                               int64_t width) {
  TORCH_CHECK(grad.dim() == 4 && grad.sizes() == argmax.sizes() &&
                  argmax.scalar_type() == at::kInt,
              "max_pool2d backward: grad ", grad.sizes(), " and int32 argmax ",
              argmax.sizes(), " must be (N, C, OH, OW) of the same shape");
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kBFloat16,
              "max_pool2d backward: grad must be float32 or bfloat16, got ",
              grad.scalar_type());
  at::Tensor grad_input =
      at::empty({grad.size(0), grad.size(1), height, width}, grad.options());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor argmax_c = argmax.contiguous();
  const int64_t planes = grad.size(0) * grad.size(1);
  const int64_t in_plane = height * width;
  const int64_t out_plane = grad.size(2) * grad.size(3);
  // Batches of about 32K input pixels per task.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(in_plane, 1));
  dispatch_pool_type(grad.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* g = grad_c.data_ptr<scalar_t>();
    const int32_t* arg = argmax_c.data_ptr<int32_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        scalar_t* plane = gi + p * in_plane;
        std::fill(plane, plane + in_plane, scalar_t(0));
        const scalar_t* g_plane = g + p * out_plane;
        const int32_t* arg_plane = arg + p * out_plane;
        for (int64_t i = 0; i < out_plane; ++i) {
          plane[arg_plane[i]] += g_plane[i];
        }
      }
    });
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(detectron, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_forward);
  m.impl("_max_pool2d_backward", &max_pool2d_backward);
}

} // namespace detectron
