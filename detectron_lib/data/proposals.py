"""Precomputed proposal files in Detectron's pickle layout (for Fast R-CNN training/testing).

The file holds a dict of parallel lists, one item per image:
    boxes:  (P_i, 4) float32, x1y1x2y2 in original image pixels
    scores: (P_i,) float32
    ids:    image ids (Detectron's older files call this list 'indexes')
Files are data, never code: they are read with the restricted unpickler of utils.safe_pickle,
which builds only numpy arrays of plain dtypes, numbers, strings and containers and refuses
anything else (naming the file and the object) before it runs. Files written by Detectron
under Python 2 read with encoding='latin1'; ``save_proposals`` writes this same layout (lists
of float32 arrays, ids as ints or strings, pickle protocol 4), which that unpickler reads.
"""
import pickle

import numpy as np
import torch

from detectron_lib.errors import DatasetError
from detectron_lib.utils import safe_pickle
from detectron_lib.utils.io import atomic_write


def load_proposals(path):
    """Read a proposal file. Returns {image_id: (boxes (P, 4) float32, scores (P,) float32)}."""
    try:
        with open(path, "rb") as f:
            data = safe_pickle.load(f, encoding="latin1")
    except safe_pickle.RefusedObject as e:
        raise DatasetError(safe_pickle.refusal_message(path, e.what, "proposal file")) from None
    except FileNotFoundError:
        raise DatasetError(f"proposal file {path} not found; produce it with `detectron "
                           f"proposals` or fix TRAIN.PROPOSAL_FILES / TEST.PROPOSAL_FILES") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError,
            TypeError, IndexError, KeyError) as e:
        raise DatasetError(f"proposal file {path} is not a readable pickle: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"proposal file {path} must hold a dict with boxes, scores and ids")
    ids = data.get("ids", data.get("indexes"))
    if ids is None or "boxes" not in data or "scores" not in data:
        raise DatasetError(f"proposal file {path} needs 'boxes', 'scores' and 'ids' (or "
                           f"'indexes'); found keys {sorted(data)}")
    if not len(ids) == len(data["boxes"]) == len(data["scores"]):
        raise DatasetError(f"proposal file {path}: 'boxes', 'scores' and 'ids' differ in length")
    proposals = {}
    for image_id, boxes, scores in zip(ids, data["boxes"], data["scores"]):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(boxes):
            raise DatasetError(f"proposal file {path}: image {image_id} has {len(boxes)} boxes "
                               f"but {len(scores)} scores")
        proposals[_plain_id(image_id)] = (boxes, scores)
    return proposals


def attach_proposals(records, proposals, top_k, source="proposals"):
    """Add each record's top-``top_k`` proposals by score, in place (loader.in_box_convention
    makes them Boxes clipped to the image, as Detectron clipped them).

    Adds 'proposals' (P, 4) float32 and 'proposal_scores' (P,) float32; top_k <= 0 keeps all.
    A record whose image id has no proposals raises DatasetError (``source`` names the file).
    """
    missing = [r["image_id"] for r in records if _plain_id(r["image_id"]) not in proposals]
    if missing:
        raise DatasetError(f"{source} has no proposals for {len(missing)} image id(s), e.g. "
                           f"{missing[:5]}; was it computed on another dataset?")
    for record in records:
        boxes, scores = proposals[_plain_id(record["image_id"])]
        order = np.argsort(-scores, kind="stable")
        if top_k > 0:
            order = order[:top_k]
        record["proposals"] = boxes[order].copy()
        record["proposal_scores"] = scores[order].copy()
    return records


def filter_crowd_proposals(records, thresh):
    """Drop, in place, each record's proposals that lie inside one of its crowd regions by more
    than ``thresh`` of their area (TRAIN.CROWD_FILTER_THRESH; <= 0 keeps all). Returns how
    many were dropped.

    Detectron's _filter_crowd_proposals: "inside" is the intersection with the crowd box over
    the proposal's area (pycocotools' iou with iscrowd=1), of the regions the records' Boxes
    cover (loader.in_box_convention). Detectron marked such a proposal as overlapping
    no ground truth (IoU -1), which kept it out of both the fg and the bg sample of the box
    head; dropping it does the same. Only training on precomputed proposals filters, as in
    Detectron (RPN proposals of end-to-end training are not filtered).
    """
    if thresh <= 0:
        return 0
    dropped = 0
    for record in records:
        proposals = record.get("proposals")
        crowd = record["boxes"][torch.as_tensor(record["is_crowd"], dtype=torch.bool)]
        if proposals is None or not len(proposals) or not len(crowd):
            continue
        inside = area_fraction_inside(proposals.to(torch.float64).regions().numpy(),
                                      crowd.to(torch.float64).regions().numpy()).max(axis=1)
        keep = ~(inside > thresh)
        dropped += int((~keep).sum())
        record["proposals"] = proposals[torch.from_numpy(keep)]
        record["proposal_scores"] = record["proposal_scores"][keep]
    return dropped


def area_fraction_inside(boxes, regions):
    """(N, M) float64: the fraction of the area of each of ``boxes`` (N, 4) that lies inside
    each of ``regions`` (M, 4), both continuous x1y1x2y2 (BoxConvention.regions); 0 for a box
    without area."""
    boxes, regions = np.asarray(boxes, np.float64), np.asarray(regions, np.float64)
    widths = (np.minimum(boxes[:, None, 2], regions[None, :, 2])
              - np.maximum(boxes[:, None, 0], regions[None, :, 0]))
    heights = (np.minimum(boxes[:, None, 3], regions[None, :, 3])
               - np.maximum(boxes[:, None, 1], regions[None, :, 1]))
    intersection = widths.clip(min=0) * heights.clip(min=0)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return np.where(area > 0, intersection / np.where(area > 0, area, 1.0), 0.0)


def save_proposals(path, boxes, scores, ids):
    """Write proposals in Detectron's layout, atomically: a pickle (protocol 4) of only a
    dict of lists of float32 arrays and ids, which ``load_proposals`` reads as data.

    boxes: list of (P_i, 4) arrays; scores: list of (P_i,) arrays; ids: list of image ids
    (ints or strings).
    """
    if not len(boxes) == len(scores) == len(ids):
        raise ValueError("boxes, scores and ids must have one entry per image")
    data = {
        "boxes": [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
        "scores": [np.asarray(s, dtype=np.float32).reshape(-1) for s in scores],
        "ids": [_plain_id(i) for i in ids],
    }
    with atomic_write(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def _plain_id(image_id):
    """numpy integers (and Python 2 longs) compare as Python ints."""
    return int(image_id) if isinstance(image_id, (int, np.integer)) else image_id
