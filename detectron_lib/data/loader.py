"""Training and inference data loaders: samplers, datasets and their config builders.

Training data order is a pure function of (RNG_SEED, rank, world size, iteration):

* ``TrainingSampler`` shuffles each epoch with its own RNG, cuts it into per-rank batches
  (of one orientation when aspect grouping is on) and hands global batch ``i`` to the ranks
  as batches ``i * world_size + rank``: each rank sees a disjoint share of every global
  batch, and a sampler built at ``start_iter`` continues exactly where an uninterrupted one
  would be.
* Every sample carries its global stream position; the scale from TRAIN.SCALES and the
  horizontal flip are drawn from (seed, position) alone. TRAIN.USE_FLIPPED therefore means a
  random flip with probability 0.5 per sample, instead of Detectron's doubling of the roidb
  with flipped copies: the same expected mix, with no epoch-length change.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detectron_lib.data.catalog import get_dataset, register_datasets_from_cfg
from detectron_lib.data.coco import filter_for_training, load_dataset
from detectron_lib.data.proposals import attach_proposals, filter_crowd_proposals, load_proposals
from detectron_lib.data.transforms import augmentation_for_position, collate_batch, prepare_sample
from detectron_lib.data.verify import verify_dataset_images
from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.structures.boxes import BoxConvention, Boxes
from detectron_lib.structures.keypoints import flip_permutation


class TrainingSampler:
    """Infinite batch sampler yielding lists of (dataset index, global sample position).

    Args:
        group_ids: (N,) ints, one per image; a batch only mixes images of one group (aspect
            grouping: 0 landscape, 1 portrait). All zeros disables grouping.
        images_per_batch: images per rank per iteration (TRAIN.IMS_PER_BATCH).
        seed: RNG_SEED.
        rank, world_size: this process's shard of every global batch.
        start_iter: first iteration to yield (resuming).

    An epoch is every image once, in a seeded random order, grouped into global batches of
    ``images_per_batch * world_size`` images; a group whose size is not a multiple of that is
    topped up with repeats of its own first images, so the number of batches per epoch is
    fixed. Rank r takes the r-th slice of each global batch, so N processes see exactly the
    images (and sample positions) one process would see with N times the batch size.
    """

    def __init__(self, group_ids, images_per_batch, seed, rank=0, world_size=1, start_iter=0):
        group_ids = np.asarray(group_ids, dtype=np.int64)
        if group_ids.size == 0:
            raise DatasetError("the training set is empty: no image has a usable box")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.images_per_batch = int(images_per_batch)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_iter = int(start_iter)
        self.global_batch_size = self.images_per_batch * self.world_size
        self._groups = [np.flatnonzero(group_ids == g) for g in np.unique(group_ids)]
        self.batches_per_epoch = sum(-(-len(g) // self.global_batch_size) for g in self._groups)
        self._cached_epoch = (None, None)

    def epoch_batches(self, epoch):
        """(batches_per_epoch, global batch size) int64 dataset indices of ``epoch``."""
        if self._cached_epoch[0] != epoch:
            rng = np.random.default_rng([self.seed % 2**32, epoch])
            batches = []
            for members in self._groups:
                order = members[rng.permutation(len(members))]
                num = -(-len(order) // self.global_batch_size) * self.global_batch_size
                batches.append(np.resize(order, num).reshape(-1, self.global_batch_size))
            batches = np.concatenate(batches)
            self._cached_epoch = (epoch, batches[rng.permutation(len(batches))])
        return self._cached_epoch[1]

    def batch_at(self, iteration):
        """This rank's batch of ``iteration``: [(dataset index, global position), ...]."""
        epoch, offset = divmod(iteration, self.batches_per_epoch)
        start = self.rank * self.images_per_batch
        indices = self.epoch_batches(epoch)[offset][start:start + self.images_per_batch]
        first = iteration * self.global_batch_size + start
        return [(int(i), first + k) for k, i in enumerate(indices)]

    def __iter__(self):
        iteration = self.start_iter
        while True:
            yield self.batch_at(iteration)
            iteration += 1


class InferenceSampler:
    """Sequential indices of this rank's contiguous shard (shard sizes differ by at most 1)."""

    def __init__(self, size, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        bounds = np.linspace(0, size, world_size + 1).round().astype(int)
        self.indices = range(int(bounds[rank]), int(bounds[rank + 1]))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class TrainingDataset(Dataset):
    """Records to training samples; items are (index, position) pairs from TrainingSampler.

    Args:
        records: per-image dicts from coco.load_coco_json.
        scales: short-side target sizes, one drawn per sample (TRAIN.SCALES).
        max_size: long-side cap (TRAIN.MAX_SIZE).
        use_flip: random horizontal flip with probability 0.5 (TRAIN.USE_FLIPPED).
        seed: RNG_SEED; augmentation is a pure function of (seed, position).
        keypoint_flip_perm: (K,) from structures.keypoints.flip_permutation, for keypoints.

    Records hold Boxes in the model's convention (in_box_convention).
    """

    def __init__(self, records, scales, max_size, use_flip, seed, keypoint_flip_perm=None):
        self.records = records
        self.scales = tuple(scales)
        self.max_size = max_size
        self.use_flip = use_flip
        self.seed = seed
        self.keypoint_flip_perm = keypoint_flip_perm

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        index, position = item
        target_size, flip, sample_seed = augmentation_for_position(
            self.seed, position, self.scales, self.use_flip)
        sample = prepare_sample(self.records[index], target_size, self.max_size, flip,
                                self.keypoint_flip_perm)
        sample["position"] = position
        sample["seed"] = sample_seed
        return sample


class InferenceDataset(Dataset):
    """Records to test samples at one scale (TEST.SCALE, TEST.MAX_SIZE), never flipped; with
    ``scale`` None at their original size (for a model that resizes them itself, as
    test-time augmentation does). Records hold Boxes in the model's convention
    (in_box_convention)."""

    def __init__(self, records, scale, max_size):
        self.records = records
        self.scale = scale
        self.max_size = max_size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return prepare_sample(self.records[index], self.scale, self.max_size)


def aspect_group_ids(records):
    """(N,) int64: 0 for landscape (width >= height) images, 1 for portrait ones."""
    return np.array([int(r["width"] < r["height"]) for r in records], dtype=np.int64)


class TrainLoader:
    """Iterable of training Batches, from ``start_iter`` on, without end.

    ``position`` is the iteration of the next batch: a checkpoint stores it, and a loader
    built with ``start_iter=position`` continues the same stream. ``categories`` is the
    datasets' CategoryMap when built from a config.
    """

    def __init__(self, dataset, group_ids, images_per_batch, seed, num_workers=0,
                 rank=0, world_size=1, start_iter=0, categories=None):
        self.dataset = dataset
        self.categories = categories
        self.position = int(start_iter)
        self._sampler_args = (group_ids, images_per_batch, seed, rank, world_size)
        self._num_workers = num_workers

    def __iter__(self):
        sampler = TrainingSampler(*self._sampler_args, start_iter=self.position)
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self._num_workers,
                            collate_fn=collate_batch)
        for batch in loader:
            self.position += 1
            yield batch


class InferenceLoader:
    """Iterable of inference Batches over this rank's contiguous shard, in dataset order."""

    def __init__(self, dataset, num_workers=0, rank=0, world_size=1, images_per_batch=1,
                 categories=None):
        self.dataset = dataset
        self.categories = categories
        self.sampler = InferenceSampler(len(dataset), rank, world_size)
        self._loader = DataLoader(
            dataset, batch_size=images_per_batch, sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_batch)

    def __iter__(self):
        return iter(self._loader)

    def __len__(self):
        return len(self._loader)


def make_train_loader(dataset, images_per_batch, seed, num_workers=0, aspect_grouping=True,
                      rank=0, world_size=1, start_iter=0, categories=None):
    """A TrainLoader over ``dataset`` (a TrainingDataset), grouping by orientation if asked."""
    groups = aspect_group_ids(dataset.records) if aspect_grouping \
        else np.zeros(len(dataset), dtype=np.int64)
    return TrainLoader(dataset, groups, images_per_batch, seed, num_workers,
                       rank, world_size, start_iter, categories)


def load_datasets(names, data_root=None, min_area=0.0, proposal_files=(), proposal_limit=-1):
    """Load and concatenate catalog datasets that share one category (and keypoint) layout,
    with the top ``proposal_limit`` precomputed proposals of each image if given.

    Returns (records, categories, keypoint_flip_perm or None).
    """
    if isinstance(names, str):
        names = (names,)
    if not names:
        raise ConfigError("no dataset given: set TRAIN.DATASETS / TEST.DATASETS")
    if proposal_files and len(proposal_files) != len(names):
        raise ConfigError(f"{len(proposal_files)} proposal file(s) for {len(names)} dataset(s); "
                          f"PROPOSAL_FILES needs one file per dataset in DATASETS")
    records, categories, flip_perm = [], None, None
    for k, name in enumerate(names):
        loaded = load_dataset(name, data_root, min_area)
        if categories is not None and loaded.categories != categories:
            raise DatasetError(f"dataset '{name}' has categories {list(loaded.categories.names)}"
                               f", unlike {names[0]}'s {list(categories.names)}; datasets "
                               f"trained together must share one category list")
        categories = loaded.categories
        if proposal_files:
            attach_proposals(loaded.records, load_proposals(proposal_files[k]), proposal_limit,
                             source=str(proposal_files[k]))
        entry = get_dataset(name)
        if loaded.keypoint_names is not None and entry.keypoint_flip_map is not None:
            flip_perm = flip_permutation(loaded.keypoint_names, entry.keypoint_flip_map)
        records.extend(loaded.records)
    return records, categories, flip_perm


def in_box_convention(records, convention):
    """Records (new dicts) whose boxes and precomputed proposals are Boxes in the model's
    box ``convention`` (BoxConvention.of(cfg)): the datasets' continuous regions (x2 = x + w)
    converted once, the proposals clipped to the image, as Detectron clipped them. From here
    on the boxes answer every question about their convention themselves."""
    converted = []
    for record in records:
        regions = torch.as_tensor(np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4))
        record = dict(record, boxes=Boxes.from_regions(regions, convention))
        if record.get("proposals") is not None:
            record["proposals"] = Boxes(torch.as_tensor(record["proposals"]), convention).clip(
                record["height"], record["width"])
        converted.append(record)
    return converted


def check_num_classes(cfg, categories, dataset_names):
    """MODEL.NUM_CLASSES fits the categories of ``dataset_names``: their count plus background
    or, with MODEL.LABELS_ARE_CATEGORY_IDS, more than the largest category id. RPN-only
    models have no classifier and are not checked, nor is an unset (-1) NUM_CLASSES, which
    building a model with a classifier reports."""
    num_classes = cfg.MODEL.NUM_CLASSES
    if cfg.MODEL.RPN_ONLY or num_classes == -1:
        return
    names = ", ".join(dataset_names)
    if cfg.MODEL.LABELS_ARE_CATEGORY_IDS:
        largest = max(categories.json_ids)
        if num_classes <= largest:
            raise ConfigError(f"MODEL.LABELS_ARE_CATEGORY_IDS: category id {largest} of {names} "
                              f"needs MODEL.NUM_CLASSES > {largest}, got {num_classes}")
    elif num_classes != categories.num_classes:
        raise ConfigError(
            f"MODEL.NUM_CLASSES is {num_classes}, but {names} has {len(categories.json_ids)} "
            f"categories, so the model needs {categories.num_classes} classes (background "
            f"included); set MODEL.NUM_CLASSES {categories.num_classes}")


def relabel_with_category_ids(records, categories):
    """Records whose classes are JSON category ids instead of 1..K, for a model labelled by
    category id (MODEL.LABELS_ARE_CATEGORY_IDS; check_num_classes checks MODEL.NUM_CLASSES)."""
    json_ids = np.array((0,) + tuple(categories.json_ids), dtype=np.int64)
    return [dict(record, classes=json_ids[record["classes"]]) for record in records]


def build_train_loader(cfg, rank=0, world_size=1, start_iter=0, data_root=None,
                       verify_images=True):
    """The TrainLoader of TRAIN.DATASETS from Detectron's keys (TRAIN.*, DATA_LOADER.NUM_THREADS,
    FPN.*, PIXEL_MEANS, RNG_SEED, DATA_ROOT). Precomputed TRAIN.PROPOSAL_FILES are attached
    whole, as Detectron did for training (TEST.PROPOSAL_LIMIT applies at test time only),
    less those inside crowd regions (TRAIN.CROWD_FILTER_THRESH, see filter_crowd_proposals).

    With ``verify_images`` every training image is decoded once up front (cached per dataset,
    see data.verify), so that a missing or corrupt image fails here, naming all bad files,
    and not when training reaches it. Under an initialized process group the ranks share
    the decoding (``rank``, ``world_size``) and all raise the same error."""
    register_datasets_from_cfg(cfg)
    data_root = data_root or cfg.DATA_ROOT or None
    records, categories, flip_perm = load_datasets(
        tuple(cfg.TRAIN.DATASETS), data_root,
        min_area=cfg.TRAIN.GT_MIN_AREA, proposal_files=tuple(cfg.TRAIN.PROPOSAL_FILES),
        proposal_limit=-1)
    records = in_box_convention(records, BoxConvention.of(cfg))
    filter_crowd_proposals(records, cfg.TRAIN.CROWD_FILTER_THRESH)
    check_num_classes(cfg, categories, cfg.TRAIN.DATASETS)
    if cfg.MODEL.LABELS_ARE_CATEGORY_IDS:
        records = relabel_with_category_ids(records, categories)
    records = filter_for_training(records, cfg.MODEL.KEYPOINTS_ON)
    if verify_images:
        verify_dataset_images(records, data_root, rank=rank, world_size=world_size)
    dataset = TrainingDataset(records, cfg.TRAIN.SCALES, cfg.TRAIN.MAX_SIZE,
                              cfg.TRAIN.USE_FLIPPED, cfg.RNG_SEED, flip_perm)
    return make_train_loader(dataset, cfg.TRAIN.IMS_PER_BATCH, cfg.RNG_SEED,
                             num_workers=cfg.DATA_LOADER.NUM_THREADS,
                             aspect_grouping=cfg.TRAIN.ASPECT_GROUPING,
                             rank=rank, world_size=world_size, start_iter=start_iter,
                             categories=categories)


def build_test_loader(cfg, dataset_name, rank=0, world_size=1, data_root=None,
                      proposal_file=None, resize=True):
    """The InferenceLoader of one dataset at TEST.SCALE / TEST.MAX_SIZE (without ``resize``
    at the original sizes), sharded by rank, with the top TEST.PROPOSAL_LIMIT proposals of
    ``proposal_file`` if given."""
    register_datasets_from_cfg(cfg)
    records, categories, _ = load_datasets(
        (dataset_name,), data_root or cfg.DATA_ROOT or None,
        proposal_files=(proposal_file,) if proposal_file else (),
        proposal_limit=cfg.TEST.PROPOSAL_LIMIT)
    check_num_classes(cfg, categories, (dataset_name,))
    dataset = InferenceDataset(in_box_convention(records, BoxConvention.of(cfg)),
                               cfg.TEST.SCALE if resize else None, cfg.TEST.MAX_SIZE)
    return InferenceLoader(dataset, num_workers=cfg.DATA_LOADER.NUM_THREADS, rank=rank,
                           world_size=world_size, categories=categories)
