// NMS, class-wise (batched) NMS, soft-NMS and pairwise box IoU on CPU.
//
// Boxes are (x1, y1, x2, y2) without Detectron's legacy +1 in widths and areas, the
// convention of torchvision.ops.
//  - nms: boxes sorted by score into structure-of-arrays, then for each kept box one
//    branch-free (vectorized) pass marks the later boxes it suppresses.
//  - batched_nms: boxes are grouped by class and each group runs nms on its own (no
//    coordinate-offset trick, so no IoU precision is lost on large offsets); groups run
//    in parallel. The result is sorted by decreasing score, like torchvision's.
//  - soft_nms: Detectron's cython_nms.soft_nms loop (see soft_nms_impl).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "simd.h"

namespace detectron {

namespace {

void check_boxes(const at::Tensor& boxes, const char* op, const char* name = "boxes") {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": ", name,
              " must be (N, 4) x1y1x2y2, got ", boxes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": ", name,
              " must be float or double, got ", boxes.scalar_type());
}

void check_scores(const at::Tensor& boxes, const at::Tensor& scores, const char* op) {
  check_boxes(boxes, op);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must be (",
              boxes.size(0), ",), got ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), op,
              ": boxes and scores must have the same dtype");
}

// Positions 0..n-1 ordered by decreasing score; equal scores keep their input order.
template <typename T>
std::vector<int64_t> order_by_score(const T* scores, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [scores](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  return order;
}

// Greedy NMS over the boxes listed in `members` (already in decreasing score order);
// sets kept[members[k]] = 1 for the survivors.
template <typename T>
void nms_group(const T* boxes, const int64_t* members, int64_t n, T threshold,
               uint8_t* kept) {
  std::vector<T> x1(n), y1(n), x2(n), y2(n), area(n);
  for (int64_t k = 0; k < n; ++k) {
    const T* b = boxes + members[k] * 4;
    x1[k] = b[0];
    y1[k] = b[1];
    x2[k] = b[2];
    y2[k] = b[3];
    area[k] = (b[2] - b[0]) * (b[3] - b[1]);
  }
  std::vector<uint8_t> suppressed(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) {
      continue;
    }
    kept[members[i]] = 1;
    const int64_t rest = n - i - 1;
    if (rest > 0) {
      suppress_overlapping(rest, x1[i], y1[i], x2[i], y2[i], area[i], &x1[i + 1], &y1[i + 1],
                           &x2[i + 1], &y2[i + 1], &area[i + 1], threshold,
                           &suppressed[i + 1]);
    }
  }
}

// Indices (in `order`) of the kept boxes, as an int64 tensor.
at::Tensor gather_kept(const std::vector<int64_t>& order, const std::vector<uint8_t>& kept,
                       const at::Tensor& like) {
  std::vector<int64_t> keep;
  for (int64_t index : order) {
    if (kept[index]) {
      keep.push_back(index);
    }
  }
  return at::tensor(keep, like.options().dtype(at::kLong));
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_scores(boxes, scores, "nms");
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor scores_c = scores.contiguous();
  std::vector<uint8_t> kept(n, 0);
  std::vector<int64_t> order;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms", [&] {
    order = order_by_score(scores_c.data_ptr<scalar_t>(), n);
    nms_group(boxes_c.data_ptr<scalar_t>(), order.data(), n,
              static_cast<scalar_t>(iou_threshold), kept.data());
  });
  return gather_kept(order, kept, boxes);
}

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores,
                       const at::Tensor& idxs, double iou_threshold) {
  check_scores(boxes, scores, "batched_nms");
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0) &&
                  !at::isFloatingType(idxs.scalar_type()),
              "batched_nms: idxs must be an integer tensor of shape (", boxes.size(0),
              ",), got ", idxs.scalar_type(), " ", idxs.sizes());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor scores_c = scores.contiguous();
  const at::Tensor classes = idxs.to(at::kLong).contiguous();
  const int64_t* cls = classes.data_ptr<int64_t>();
  std::vector<uint8_t> kept(n, 0);
  std::vector<int64_t> order;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms", [&] {
    order = order_by_score(scores_c.data_ptr<scalar_t>(), n);
    // Group by class, each group still in decreasing score order.
    std::vector<int64_t> grouped(order);
    std::stable_sort(grouped.begin(), grouped.end(),
                     [cls](int64_t a, int64_t b) { return cls[a] < cls[b]; });
    std::vector<int64_t> group_start{0};
    for (int64_t k = 1; k < n; ++k) {
      if (cls[grouped[k]] != cls[grouped[k - 1]]) {
        group_start.push_back(k);
      }
    }
    group_start.push_back(n);
    const scalar_t* box_data = boxes_c.data_ptr<scalar_t>();
    const auto threshold = static_cast<scalar_t>(iou_threshold);
    const int64_t groups = static_cast<int64_t>(group_start.size()) - 1;
    at::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
      for (int64_t g = first; g < last; ++g) {
        nms_group(box_data, grouped.data() + group_start[g],
                  group_start[g + 1] - group_start[g], threshold, kept.data());
      }
    });
  });
  return gather_kept(order, kept, boxes);
}

// Detectron's cython_nms.soft_nms, without the +1 in areas. Repeatedly selects the box of
// highest (decayed) score among the remaining ones, then multiplies the score of every
// remaining box that overlaps it by a weight of their IoU:
//   method 0 (hard): 0 if IoU > threshold else 1
//   method 1 (linear): 1 - IoU if IoU > threshold else 1
//   method 2 (gaussian): exp(-IoU^2 / sigma)
// A decayed box whose score falls below score_threshold is removed (by swapping in the
// last remaining box, as Detectron does); boxes that never overlap a selected box are not
// tested against score_threshold, also as in Detectron. The selection order and the
// scores at selection are the result. Each round runs two vectorized passes (which boxes
// intersect the selected one; the first maximum of the rest) and a scalar pass that only
// visits the intersecting boxes (found with memchr).
template <typename T>
void soft_nms_impl(const T* boxes, const T* scores, int64_t n, int64_t method, T sigma,
                   T iou_threshold, T score_threshold, std::vector<int64_t>& keep,
                   std::vector<T>& kept_scores) {
  std::vector<T> x1(n), y1(n), x2(n), y2(n), area(n), score(scores, scores + n);
  std::vector<int64_t> index(n);
  std::vector<uint8_t> overlaps(n);
  for (int64_t k = 0; k < n; ++k) {
    x1[k] = boxes[4 * k];
    y1[k] = boxes[4 * k + 1];
    x2[k] = boxes[4 * k + 2];
    y2[k] = boxes[4 * k + 3];
    area[k] = (x2[k] - x1[k]) * (y2[k] - y1[k]);
    index[k] = k;
  }
  // Moves box `from` into slot `to` (the previous occupant is overwritten or swapped).
  auto move_box = [&](int64_t to, int64_t from, bool swap) {
    if (swap) {
      std::swap(x1[to], x1[from]);
      std::swap(y1[to], y1[from]);
      std::swap(x2[to], x2[from]);
      std::swap(y2[to], y2[from]);
      std::swap(area[to], area[from]);
      std::swap(score[to], score[from]);
      std::swap(index[to], index[from]);
    } else {
      x1[to] = x1[from];
      y1[to] = y1[from];
      x2[to] = x2[from];
      y2[to] = y2[from];
      area[to] = area[from];
      score[to] = score[from];
      index[to] = index[from];
      overlaps[to] = overlaps[from];
    }
  };
  int64_t remaining = n;
  for (int64_t i = 0; i < remaining; ++i) {
    move_box(i, i + first_argmax(remaining - i, &score[i]), /*swap=*/true);
    const int64_t rest = i + 1;
    if (rest >= remaining) {
      break;
    }
    const T tx1 = x1[i], ty1 = y1[i], tx2 = x2[i], ty2 = y2[i], tarea = area[i];
    mark_intersecting(remaining - rest, tx1, ty1, tx2, ty2, &x1[rest], &y1[rest], &x2[rest],
                      &y2[rest], &overlaps[rest]);
    int64_t pos = rest;
    while (pos < remaining) {
      const void* hit = std::memchr(&overlaps[pos], 1, remaining - pos);
      if (hit == nullptr) {
        break;
      }
      pos = static_cast<const uint8_t*>(hit) - overlaps.data();
      const T iw = std::min(tx2, x2[pos]) - std::max(tx1, x1[pos]);
      const T ih = std::min(ty2, y2[pos]) - std::max(ty1, y1[pos]);
      const T inter = iw * ih;
      const T iou = inter / (tarea + area[pos] - inter);
      T weight;
      if (method == 1) {
        weight = iou > iou_threshold ? T(1) - iou : T(1);
      } else if (method == 2) {
        weight = std::exp(-(iou * iou) / sigma);
      } else {
        weight = iou > iou_threshold ? T(0) : T(1);
      }
      score[pos] *= weight;
      if (score[pos] < score_threshold) {
        // Drop it: the last remaining box (with its overlap flag) takes its place and is
        // examined next.
        --remaining;
        move_box(pos, remaining, /*swap=*/false);
        continue;
      }
      ++pos;
    }
  }
  keep.assign(index.begin(), index.begin() + remaining);
  kept_scores.assign(score.begin(), score.begin() + remaining);
}

std::tuple<at::Tensor, at::Tensor> soft_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                            int64_t method, double sigma,
                                            double iou_threshold, double score_threshold) {
  check_scores(boxes, scores, "soft_nms");
  TORCH_CHECK(method >= 0 && method <= 2,
              "soft_nms: method must be 0 (hard), 1 (linear) or 2 (gaussian), got ", method);
  TORCH_CHECK(method != 2 || sigma > 0, "soft_nms: gaussian sigma must be > 0, got ", sigma);
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor scores_c = scores.contiguous();
  std::vector<int64_t> keep;
  at::Tensor kept_scores;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "soft_nms", [&] {
    std::vector<scalar_t> decayed;
    soft_nms_impl<scalar_t>(boxes_c.data_ptr<scalar_t>(), scores_c.data_ptr<scalar_t>(),
                            boxes.size(0), method, static_cast<scalar_t>(sigma),
                            static_cast<scalar_t>(iou_threshold),
                            static_cast<scalar_t>(score_threshold), keep, decayed);
    kept_scores = at::tensor(decayed, scores.options());
  });
  return {at::tensor(keep, boxes.options().dtype(at::kLong)), kept_scores};
}

at::Tensor box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "box_iou", "boxes1");
  check_boxes(boxes2, "box_iou", "boxes2");
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(),
              "box_iou: boxes1 and boxes2 must have the same dtype");
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor iou = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) {
    return iou;
  }
  const at::Tensor a = boxes1.contiguous();
  const at::Tensor b_soa = boxes2.t().contiguous();  // (4, M): one row per coordinate
  AT_DISPATCH_FLOATING_TYPES(boxes1.scalar_type(), "box_iou", [&] {
    const scalar_t* a_data = a.data_ptr<scalar_t>();
    const scalar_t* bx1 = b_soa.data_ptr<scalar_t>();
    const scalar_t* by1 = bx1 + m;
    const scalar_t* bx2 = by1 + m;
    const scalar_t* by2 = bx2 + m;
    scalar_t* out = iou.data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / m), [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const scalar_t* box = a_data + 4 * i;
        const scalar_t area_i = (box[2] - box[0]) * (box[3] - box[1]);
        scalar_t* row = out + i * m;
        for (int64_t j = 0; j < m; ++j) {
          const scalar_t w = std::max(std::min(box[2], bx2[j]) - std::max(box[0], bx1[j]), scalar_t(0));
          const scalar_t h = std::max(std::min(box[3], by2[j]) - std::max(box[1], by1[j]), scalar_t(0));
          const scalar_t inter = w * h;
          const scalar_t area_j = (bx2[j] - bx1[j]) * (by2[j] - by1[j]);
          row[j] = inter / (area_i + area_j - inter);
        }
      }
    });
  });
  return iou;
}

} // namespace

TORCH_LIBRARY_IMPL(detectron, CPU, m) {
  m.impl("nms", &nms);
  m.impl("batched_nms", &batched_nms);
  m.impl("soft_nms", &soft_nms);
  m.impl("box_iou", &box_iou);
}

} // namespace detectron
