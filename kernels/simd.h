// Channel-vector primitives shared by the RoI kernels.
//
// setup.py compiles without -march, so these few hot loops are built for several
// instruction sets (AVX-512F, AVX2, baseline SSE2) and the loader picks the best one the
// CPU supports at run time (GCC target_clones / ifunc). Other kernels mark their own hot
// loops (non-template functions) with DETECTRON_MULTI_ISA the same way.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DETECTRON_MULTI_ISA \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DETECTRON_MULTI_ISA
#endif

namespace detectron {

// y[i] += a * x[i] for i in [0, n).
void axpy(int64_t n, float a, const float* x, float* y);
void axpy(int64_t n, double a, const double* x, double* y);

// Running max with first-occurrence argmax over channels, for RoIPool on channels-last
// features: where values[c] > best[c], best[c] = values[c] and best_index[c] = index.
void max_update(int64_t n, const float* values, int32_t index, float* best, int32_t* best_index);
void max_update(int64_t n, const double* values, int32_t index, double* best,
                int32_t* best_index);

// Soft-NMS: overlaps[j] = 1 where box j of xs1..ys2 intersects (x1, y1, x2, y2) with
// positive width and height, else 0.
void mark_intersecting(int64_t n, float x1, float y1, float x2, float y2, const float* xs1,
                       const float* ys1, const float* xs2, const float* ys2, uint8_t* overlaps);
void mark_intersecting(int64_t n, double x1, double y1, double x2, double y2,
                       const double* xs1, const double* ys1, const double* xs2,
                       const double* ys2, uint8_t* overlaps);

// Index of the first maximum of values[0, n) (n > 0; NaNs are ignored, 0 if all are NaN).
int64_t first_argmax(int64_t n, const float* values);
int64_t first_argmax(int64_t n, const double* values);

// NMS inner loop: for j in [0, n), marks suppressed[j] = 1 when the IoU of box
// (x1, y1, x2, y2, area) with box j of the structure-of-arrays xs1..areas exceeds threshold.
void suppress_overlapping(
    int64_t n, float x1, float y1, float x2, float y2, float area,
    const float* xs1, const float* ys1, const float* xs2, const float* ys2,
    const float* areas, float threshold, uint8_t* suppressed);
void suppress_overlapping(
    int64_t n, double x1, double y1, double x2, double y2, double area,
    const double* xs1, const double* ys1, const double* xs2, const double* ys2,
    const double* areas, double threshold, uint8_t* suppressed);

} // namespace detectron
