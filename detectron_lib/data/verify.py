"""Checking a dataset's images up front: each one decodes in full and has its annotated size.

Without this check a missing, truncated or mis-sized image is found only when training
reaches it, possibly hours in and after snapshots were written. ``verify_images`` decodes
every image (with the same reader as training, so modes it refuses fail here too) and
raises one DatasetError that lists every bad file with its problem.

Results are cached in a small JSON file beside the dataset's annotation file
(``.<annotation file name>.images-ok.json``) that maps each good image's path to its byte
size, modification time and decoded size: a re-run only stats the files and decodes the new
or changed ones. Bad images are never cached. The cache is an optimization: where it cannot
be written (a read-only data root) the check still runs, it just decodes again next time.
"""
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch.distributed as dist

from detectron_lib.data.catalog import get_dataset
from detectron_lib.data.coco import load_dataset
from detectron_lib.data.transforms import ImageReadError, read_image_bgr
from detectron_lib.errors import DatasetError
from detectron_lib.utils.io import write_json_atomic
from detectron_lib.utils.ranks import is_main_process

logger = logging.getLogger(__name__)

# Bump when what a good image means changes (e.g. the reader accepts other modes), so old
# caches are ignored.
CACHE_VERSION = 1


def cache_path_for(annotation_file):
    """Where the image check of the dataset with ``annotation_file`` is cached."""
    annotation_file = Path(annotation_file)
    return annotation_file.with_name(f".{annotation_file.name}.images-ok.json")


def decode_image_size(path):
    """(height, width) of the fully decoded image at ``path``; raises ImageReadError."""
    return tuple(read_image_bgr(path).shape[:2])


def _default_workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _load_cache(cache_file):
    """{path: [byte size, mtime_ns, height, width]} of a valid cache file, else {}."""
    if cache_file is None:
        return {}
    try:
        with open(cache_file) as f:
            data = json.load(f)
        if data.get("version") != CACHE_VERSION or not isinstance(data.get("images"), dict):
            return {}
        return {path: entry for path, entry in data["images"].items()
                if isinstance(entry, list) and len(entry) == 4}
    except (OSError, ValueError, AttributeError):
        return {}


def _save_cache(cache_file, entries):
    try:
        write_json_atomic(cache_file, {"version": CACHE_VERSION, "images": entries})
    except OSError as e:
        logger.warning("cannot write the image check cache %s (%s); the next check decodes "
                       "every image again", cache_file, e)


def _stat_key(path):
    """[byte size, mtime_ns] of ``path``; None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _decode(path):
    try:
        return decode_image_size(path), None
    except ImageReadError as e:
        return None, e.problem


def _distributed(world_size):
    return world_size > 1 and dist.is_available() and dist.is_initialized() \
        and dist.get_world_size() == world_size


def _all_gather(obj):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def find_image_problems(records, cache_file=None, use_cache=True, workers=None, rank=0,
                        world_size=1):
    """Check the images of ``records`` (dicts with file_name, height, width).

    Args:
        cache_file: JSON cache of good images (see module doc), or None for no cache.
        use_cache: False decodes every image even if the cache knows it (the cache is
            still updated).
        workers: decoding threads (default: the usable CPUs, at most 8).
        rank, world_size: under an initialized process group of ``world_size`` ranks, each
            rank decodes its share of the uncached images and the results are gathered, so
            every rank returns the same answer; rank 0 alone writes the cache. Without a
            process group every image is checked here.
    Returns:
        (number of distinct images, number decoded now, sorted [(path, problem)]).
    """
    expected = {}
    for record in records:
        expected.setdefault(str(record["file_name"]), set()).add(
            (int(record["height"]), int(record["width"])))
    cached = _load_cache(cache_file)
    sizes, problems, pending, stats = {}, [], [], {}
    for path in expected:
        key = _stat_key(path)
        if key is None:
            problems.append((path, "not found"))
            continue
        stats[path] = key
        entry = cached.get(path)
        if use_cache and entry is not None and entry[:2] == key:
            sizes[path] = tuple(entry[2:])
        else:
            pending.append(path)

    distributed = _distributed(world_size)
    if distributed:     # shard rank 0's list, so that every image has exactly one checker
        pending = _all_gather(pending)[0]
    mine = pending[rank::world_size] if distributed else pending
    start = time.perf_counter()
    if mine:
        workers = workers or _default_workers()
        logger.info("decoding %d image(s) to check them (%d of %d known good from the "
                    "cache %s)", len(mine), len(sizes), len(expected), cache_file)
        if workers > 1 and len(mine) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(_decode, mine))
        else:
            results = [_decode(path) for path in mine]
    else:
        results = []
    decoded = {path: size for path, (size, _) in zip(mine, results) if size is not None}
    failed = [(path, problem) for path, (_, problem) in zip(mine, results) if problem]
    if distributed:
        gathered = _all_gather((decoded, failed))
        decoded = {path: size for d, _ in gathered for path, size in d.items()}
        failed = [item for _, f in gathered for item in f]
    if mine:
        logger.info("decoded %d image(s) in %.1f s", len(mine), time.perf_counter() - start)
    sizes.update(decoded)
    problems.extend(failed)

    for path, size in sizes.items():
        for height, width in sorted(expected[path] - {tuple(size)}):
            problems.append((path, f"is {size[1]}x{size[0]} but its annotation says "
                                   f"{width}x{height}"))
    if cache_file is not None and decoded and (not distributed or is_main_process(rank)):
        entries = dict(cached)
        entries.update({path: stats[path] + list(size) for path, size in decoded.items()})
        _save_cache(cache_file, entries)
    return len(expected), len(decoded), sorted(problems)


def format_problems(problems, num_images, what="the dataset"):
    """One message listing every (path, problem)."""
    lines = [f"{path}: {problem}" for path, problem in problems]
    missing = sum(problem == "not found" for _, problem in problems)
    hint = "fix or replace these files, or remove them from the annotation file"
    if missing == num_images:
        hint = "no image exists: check the image directory and the data root"
    return (f"{len(problems)} problem(s) with the {num_images} images of {what} ({hint}):\n  "
            + "\n  ".join(lines))


def verify_images(records, cache_file=None, use_cache=True, workers=None, rank=0,
                  world_size=1, what="the dataset"):
    """Check every image of ``records`` (see ``find_image_problems``); raise one DatasetError
    listing each bad file and its problem, else return (images checked, images decoded)."""
    num_images, num_decoded, problems = find_image_problems(
        records, cache_file, use_cache, workers, rank, world_size)
    if problems:
        raise DatasetError(format_problems(problems, num_images, what))
    return num_images, num_decoded


def _cache_file_of(name, data_root):
    try:
        return cache_path_for(get_dataset(name).annotation_path(data_root))
    except DatasetError:    # records of a dataset that is not in the catalog: no cache
        return None


def verify_dataset_images(datasets, data_root=None, cache=True, recheck=False, workers=None,
                          rank=0, world_size=1):
    """Check that every image of catalog dataset(s) or records decodes and has its size.

    Args:
        datasets: a catalog name, a sequence of names, or a list of records (as
            ``coco.load_coco_json`` makes them; grouped by their dataset_name).
        data_root: the data root the datasets were (or are to be) loaded from; it locates
            each dataset's cache beside its annotation file.
        cache: use and update the per-dataset cache (False: decode everything, write nothing).
        recheck: decode every image even if the cache knows it, and refresh the cache.
        workers, rank, world_size: see ``find_image_problems``.
    Returns (images checked, images decoded now); bad images raise one DatasetError that
    lists all of them, over all datasets.
    """
    if isinstance(datasets, (str, os.PathLike)):
        datasets = [datasets]
    groups = {}
    for item in datasets:
        if isinstance(item, dict):
            groups.setdefault(item.get("dataset_name"), []).append(item)
        else:
            groups.setdefault(str(item), []).extend(load_dataset(str(item), data_root).records)
    total, total_decoded, problems = 0, 0, []
    for name, records in groups.items():
        cache_file = _cache_file_of(name, data_root) if cache and name else None
        num_images, num_decoded, found = find_image_problems(
            records, cache_file, use_cache=not recheck, workers=workers, rank=rank,
            world_size=world_size)
        total += num_images
        total_decoded += num_decoded
        problems.extend(found)
    if problems:
        names = ", ".join(f"'{name}'" for name in groups if name)
        raise DatasetError(format_problems(sorted(problems), total,
                                           f"dataset {names}" if names else "the dataset"))
    return total, total_decoded
