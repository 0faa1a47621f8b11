#include "simd.h"

#include <algorithm>
#include <limits>

namespace detectron {

namespace {

template <typename T>
inline __attribute__((always_inline)) void axpy_body(
    int64_t n, T a, const T* __restrict x, T* __restrict y) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] += a * x[i];
  }
}

template <typename T>
inline __attribute__((always_inline)) void max_update_body(
    int64_t n, const T* __restrict values, int32_t index, T* __restrict best,
    int32_t* __restrict best_index) {
  for (int64_t c = 0; c < n; ++c) {
    const bool better = values[c] > best[c];
    best[c] = better ? values[c] : best[c];
    best_index[c] = better ? index : best_index[c];
  }
}

template <typename T>
inline __attribute__((always_inline)) void mark_intersecting_body(
    int64_t n, T x1, T y1, T x2, T y2, const T* __restrict xs1, const T* __restrict ys1,
    const T* __restrict xs2, const T* __restrict ys2, uint8_t* __restrict overlaps) {
  for (int64_t j = 0; j < n; ++j) {
    const T w = std::min(x2, xs2[j]) - std::max(x1, xs1[j]);
    const T h = std::min(y2, ys2[j]) - std::max(y1, ys1[j]);
    overlaps[j] = static_cast<uint8_t>((w > 0) & (h > 0));
  }
}

// Two vectorizable passes: the maximum over independent lanes, then the first chunk that
// holds it.
template <typename T>
inline __attribute__((always_inline)) int64_t first_argmax_body(int64_t n,
                                                                const T* __restrict values) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    lanes[l] = -std::numeric_limits<T>::infinity();
  }
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      lanes[l] = values[j + l] > lanes[l] ? values[j + l] : lanes[l];
    }
  }
  T best = -std::numeric_limits<T>::infinity();
  for (; j < n; ++j) {
    best = values[j] > best ? values[j] : best;
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    best = lanes[l] > best ? lanes[l] : best;
  }
  for (j = 0; j + kLanes <= n; j += kLanes) {
    bool found = false;
    for (int64_t l = 0; l < kLanes; ++l) {
      found |= values[j + l] == best;
    }
    if (found) {
      break;
    }
  }
  for (; j < n; ++j) {
    if (values[j] == best) {
      return j;
    }
  }
  return 0;
}

// Branch-free so that it vectorizes; the IoU formula and its rounding are torchvision's
// (inter / (area_i + area_j - inter)), so both keep the same boxes.
template <typename T>
inline __attribute__((always_inline)) void suppress_body(
    int64_t n, T x1, T y1, T x2, T y2, T area,
    const T* __restrict xs1, const T* __restrict ys1, const T* __restrict xs2,
    const T* __restrict ys2, const T* __restrict areas, T threshold,
    uint8_t* __restrict suppressed) {
  for (int64_t j = 0; j < n; ++j) {
    const T w = std::max(std::min(x2, xs2[j]) - std::max(x1, xs1[j]), T(0));
    const T h = std::max(std::min(y2, ys2[j]) - std::max(y1, ys1[j]), T(0));
    const T inter = w * h;
    const T iou = inter / (area + areas[j] - inter);
    suppressed[j] |= static_cast<uint8_t>(iou > threshold);
  }
}

} // namespace

DETECTRON_MULTI_ISA void axpy(int64_t n, float a, const float* x, float* y) {
  axpy_body(n, a, x, y);
}

DETECTRON_MULTI_ISA void axpy(int64_t n, double a, const double* x, double* y) {
  axpy_body(n, a, x, y);
}

DETECTRON_MULTI_ISA void max_update(int64_t n, const float* values, int32_t index,
                                    float* best, int32_t* best_index) {
  max_update_body(n, values, index, best, best_index);
}

DETECTRON_MULTI_ISA void max_update(int64_t n, const double* values, int32_t index,
                                    double* best, int32_t* best_index) {
  max_update_body(n, values, index, best, best_index);
}

DETECTRON_MULTI_ISA void mark_intersecting(int64_t n, float x1, float y1, float x2, float y2,
                                           const float* xs1, const float* ys1,
                                           const float* xs2, const float* ys2,
                                           uint8_t* overlaps) {
  mark_intersecting_body(n, x1, y1, x2, y2, xs1, ys1, xs2, ys2, overlaps);
}

DETECTRON_MULTI_ISA void mark_intersecting(int64_t n, double x1, double y1, double x2,
                                           double y2, const double* xs1, const double* ys1,
                                           const double* xs2, const double* ys2,
                                           uint8_t* overlaps) {
  mark_intersecting_body(n, x1, y1, x2, y2, xs1, ys1, xs2, ys2, overlaps);
}

DETECTRON_MULTI_ISA int64_t first_argmax(int64_t n, const float* values) {
  return first_argmax_body(n, values);
}

DETECTRON_MULTI_ISA int64_t first_argmax(int64_t n, const double* values) {
  return first_argmax_body(n, values);
}

DETECTRON_MULTI_ISA void suppress_overlapping(
    int64_t n, float x1, float y1, float x2, float y2, float area,
    const float* xs1, const float* ys1, const float* xs2, const float* ys2,
    const float* areas, float threshold, uint8_t* suppressed) {
  suppress_body(n, x1, y1, x2, y2, area, xs1, ys1, xs2, ys2, areas, threshold, suppressed);
}

DETECTRON_MULTI_ISA void suppress_overlapping(
    int64_t n, double x1, double y1, double x2, double y2, double area,
    const double* xs1, const double* ys1, const double* xs2, const double* ys2,
    const double* areas, double threshold, uint8_t* suppressed) {
  suppress_body(n, x1, y1, x2, y2, area, xs1, ys1, xs2, ys2, areas, threshold, suppressed);
}

} // namespace detectron
