"""Assigning anchors / proposals to ground truth, and sampling minibatches of them.

Labels follow Detectron: 1 foreground, 0 background, -1 ignored (neither, or not sampled).
Sampling draws from a per-image ``torch.Generator`` seeded by the data loader from (RNG_SEED,
the image's position in the training stream), so what is sampled for an image does not depend
on how the batch is split over processes, nor on whether the run was resumed.
"""
import torch


class Matcher:
    """Match each of N candidates to its highest-IoU ground-truth box and label it.

    fg: IoU >= ``fg_thresh``. bg: ``bg_thresh_lo`` <= IoU < ``bg_thresh_hi``. Anything else
    is ignored. With ``allow_low_quality_matches`` (RPN), every candidate that attains a
    ground-truth box's highest IoU is also fg, so each box gets at least one anchor.
    """

    def __init__(self, fg_thresh, bg_thresh_hi, bg_thresh_lo=0.0, allow_low_quality_matches=False):
        if bg_thresh_hi > fg_thresh:
            raise ValueError(f"bg_thresh_hi ({bg_thresh_hi}) must not exceed fg_thresh ({fg_thresh})")
        self.fg_thresh = fg_thresh
        self.bg_thresh_hi = bg_thresh_hi
        self.bg_thresh_lo = bg_thresh_lo
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou):
        """iou: (G, N). Returns matched gt index (N,) int64 (0 where G == 0) and labels (N,) int8."""
        num_gt, n = iou.shape
        if num_gt == 0:
            # No objects: everything that may be background is.
            labels = torch.zeros(n, dtype=torch.int8, device=iou.device)
            if self.bg_thresh_lo > 0:
                labels.fill_(-1)
            return torch.zeros(n, dtype=torch.int64, device=iou.device), labels
        max_iou, matched = iou.max(dim=0)
        labels = torch.full((n,), -1, dtype=torch.int8, device=iou.device)
        labels[(max_iou >= self.bg_thresh_lo) & (max_iou < self.bg_thresh_hi)] = 0
        labels[max_iou >= self.fg_thresh] = 1
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            gt_idx, cand_idx = is_best.nonzero(as_tuple=True)
            labels[cand_idx] = 1
            matched[cand_idx] = gt_idx
        return matched, labels


def sample_labels(labels, batch_size, fg_fraction, generator=None):
    """Sample at most ``batch_size`` labeled candidates, at most ``fg_fraction`` of them fg.

    labels: (N,) with 1 fg, 0 bg, -1 ignore. Returns (fg_indices, bg_indices), int64. As in
    Detectron, background fills whatever the foreground leaves of the batch. ``generator``:
    a CPU torch.Generator (None: torch's global RNG).
    """
    fg = torch.nonzero(labels == 1).flatten()
    bg = torch.nonzero(labels == 0).flatten()
    num_fg = min(int(batch_size * fg_fraction), fg.numel())
    num_bg = min(batch_size - num_fg, bg.numel())
    fg = fg[torch.randperm(fg.numel(), generator=generator).to(fg.device)[:num_fg]]
    bg = bg[torch.randperm(bg.numel(), generator=generator).to(bg.device)[:num_bg]]
    return fg, bg
