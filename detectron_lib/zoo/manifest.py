"""Zoo manifests: which baselines a model zoo trains, how they depend on each other, and where
the DAG puts every file it writes.

A manifest (``configs/zoo/*.yaml``) looks like::

    name: shapes                      # MLflow experiment and results/<name>/
    table: MODEL_ZOO.md               # the table the zoo_table rule renders
    overrides: [DEVICE, cpu]          # config overrides applied to every baseline
    default_resources: {gpus: 0, threads: 2, runtime: 60, mem_mb: 4000}
    baselines:
      rpn_R-18-FPN_1x:
        config: configs/shapes/rpn_R-18-FPN_1x.yaml
        section: rpn
      fast_rcnn_R-18-FPN_1x:
        config: configs/shapes/fast_rcnn_R-18-FPN_1x.yaml
        section: fast_mask_on_proposals
        proposals_from: rpn_R-18-FPN_1x   # trains and tests on that RPN's dumped proposals
        weights_from: R-18-GN             # TRAIN.WEIGHTS: that pretrained body
    pretrained:                         # bodies `detectron pretrain` makes (the ImageNet stand-in)
      R-18-GN:
        config: configs/shapes/pretrain/R-18-GN.yaml
    notes:                              # bullets under a section's table, as Detectron's Notes
      rpn: [AR@1000 on shapes_val; Detectron's R-50-FPN RPN has 57.2 on COCO minival.]

The structure is checked against ``workflow/schemas/zoo.schema.yaml`` when the DAG is built;
``load_manifest`` checks what a schema cannot (dependencies, config files, datasets) and
raises ConfigError naming the manifest entry at fault.
"""
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from detectron_lib.errors import ConfigError
from detectron_lib.utils.download import cache_path_for, is_url

# Detectron's MODEL_ZOO.md sections, in the order the table lists them.
DEFAULT_MANIFEST = "configs/zoo/shapes.yaml"   # the Snakefile's default too

SECTIONS = {
    "rpn": "RPN Proposal Baselines",
    "fast_mask_on_proposals": "Fast & Mask R-CNN Baselines Using Precomputed RPN Proposals",
    "end_to_end": "End-to-End Faster & Mask R-CNN Baselines",
    "retinanet": "RetinaNet Baselines",
    "keypoints_on_proposals": "Keypoint-only Mask R-CNN Baselines Using Precomputed RPN Proposals",
    "keypoints_end_to_end": "End-to-End Keypoint-only Mask R-CNN Baselines",
}

DEFAULT_RESOURCES = {"gpus": 0, "threads": 1, "runtime": 60, "mem_mb": 4000, "nodes": 1}


@dataclass(frozen=True)
class Resources:
    """What one job of a baseline asks the scheduler for.

    gpus: GPUs per node (and torchrun workers per node when > 1); threads: CPU threads per
    node; runtime: minutes; mem_mb: memory in MB per node; nodes: nodes of a training (more
    than 1: one torchrun per node, joined through a c10d rendezvous; SLURM only).
    """

    gpus: int
    threads: int
    runtime: int
    mem_mb: int
    nodes: int = 1

    @property
    def num_workers(self):
        """Training processes in all (NUM_GPUS, the world size): on each node one per GPU,
        or a single CPU process. TRAIN.IMS_PER_BATCH is per process, so the global batch is
        that times this; SOLVER.BASE_LR is used as the config gives it (Detectron's configs
        set both for their NUM_GPUS, by the linear scaling rule)."""
        return self.nodes * max(1, self.gpus)


@dataclass(frozen=True)
class Baseline:
    """One row of the zoo table.

    name: e.g. 'e2e_mask_rcnn_R-50-FPN_1x' (Detectron's file-name convention
        '<type>_<backbone>_<lr schedule>' gives the backbone and schedule columns).
    config: path of its Detectron-format YAML.
    section: key of SECTIONS.
    proposals_from: name of the RPN baseline whose dumped proposals it trains and tests on.
    weights_from: name of the manifest's pretrained body it starts from (TRAIN.WEIGHTS).
    overrides: extra ``KEY VALUE`` config overrides, after the manifest-wide ones.
    start_early: its jobs start before the others of their stage (the DAG's scheduling
        priority); for the baselines with the longest jobs, so that short jobs end the run.
    """

    name: str
    config: str
    section: str
    resources: Resources
    proposals_from: str = None
    weights_from: str = None
    overrides: tuple = ()
    backbone: str = None
    lr_schd: str = None
    start_early: bool = False

    def __post_init__(self):
        parts = self.name.split("_")
        if self.backbone is None:
            object.__setattr__(self, "backbone", parts[-2] if len(parts) >= 3 else "-")
        if self.lr_schd is None:
            object.__setattr__(self, "lr_schd", parts[-1] if len(parts) >= 2 else "-")


@dataclass(frozen=True)
class Pretrained:
    """A body pretrained by ``detectron pretrain`` for the baselines that name it."""

    name: str
    config: str
    resources: Resources


@dataclass(frozen=True)
class ZooLayout:
    """Every path the DAG reads or writes for one zoo, relative to the working directory.

    Methods return Snakemake patterns when given '{baseline}' / '{dataset}' and concrete
    paths when given names.
    """

    zoo: str
    results_dir: str = "results"

    @property
    def root(self):
        return f"{self.results_dir}/{self.zoo}"

    @property
    def experiment_file(self):
        """JSON written by mlflow_init: tracking URI, experiment name and id."""
        return f"{self.root}/mlflow_experiment.json"

    @property
    def artifact_dir(self):
        return f"{self.results_dir}/mlflow-artifacts/{self.zoo}"

    def dataset_marker(self, dataset):
        """JSON written by prepare_dataset once the dataset's files are on disk."""
        return f"{self.root}/datasets/{dataset}.json"

    def train_dir(self, baseline):
        """The baseline's OUTPUT_DIR: snapshots, model_final.pth, train_log.jsonl, config.yaml."""
        return f"{self.root}/{baseline}/train"

    def weights(self, baseline):
        return f"{self.train_dir(baseline)}/model_final.pth"

    def train_stats(self, baseline):
        """Train time, memory, hardware and model facts measured around training."""
        return f"{self.train_dir(baseline)}/train_stats.json"

    def run_file(self, baseline):
        """The baseline's MLflow parent run id, read by every later stage."""
        return f"{self.root}/{baseline}/mlflow_run.json"

    def proposals(self, baseline, dataset):
        return f"{self.root}/{baseline}/proposals/{dataset}.pkl"

    def proposal_metrics(self, baseline, dataset):
        return f"{self.root}/{baseline}/proposals/{dataset}_metrics.json"

    def eval_dir(self, baseline):
        return f"{self.root}/{baseline}/eval"

    def metrics(self, baseline):
        """metrics.json of the baseline's evaluation on its first TEST.DATASETS entry."""
        return f"{self.eval_dir(baseline)}/metrics.json"

    def pretrained_weights(self, name):
        """Detectron-format body weights written by the pretrain rule."""
        return f"{self.root}/pretrained/{name}.pkl"

    def pretrained_run(self, name):
        """The pretraining's MLflow run id."""
        return f"{self.root}/pretrained/{name}_mlflow_run.json"

    @property
    def download_cache(self):
        """DOWNLOAD_CACHE of the jobs: the files the zoo's configs name by URL, fetched by the
        fetch_weights rule into <results_dir>/weights/<host>/<path of the URL>; shared by
        every zoo of the results folder."""
        return f"{self.results_dir}/weights"

    def download(self, name):
        """A file of the download cache, ``name`` being its download_name."""
        return f"{self.download_cache}/{name}"

    def log(self, rule, name):
        return f"{self.results_dir}/logs/{self.zoo}/{rule}/{name}.log"

    def benchmark(self, rule, name):
        return f"{self.results_dir}/benchmarks/{self.zoo}/{rule}/{name}.tsv"


@dataclass(frozen=True)
class ZooManifest:
    """A validated zoo manifest (see the module docstring)."""

    name: str
    table: str
    baselines: dict                 # name -> Baseline, in manifest order
    pretrained: dict = field(default_factory=dict)   # name -> Pretrained
    title: str = ""
    description: str = ""
    notes: dict = field(default_factory=dict)       # section -> tuple of bullets
    results_dir: str = "results"
    data_root: str = ""
    dataset_catalog: str = ""
    overrides: tuple = ()
    source: str = "<manifest>"
    _datasets_cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def layout(self):
        return ZooLayout(self.name, self.results_dir)

    def baseline(self, name):
        try:
            return self.baselines[name]
        except KeyError:
            raise ConfigError(f"{self.source}: no baseline named '{name}'; the manifest has "
                              f"{', '.join(self.baselines)}") from None

    def pretrained_body(self, name):
        try:
            return self.pretrained[name]
        except KeyError:
            raise ConfigError(f"{self.source}: no pretrained body named '{name}'; the manifest "
                              f"has {', '.join(self.pretrained) or 'none'}") from None

    def pretrain_datasets(self, name):
        """Datasets the pretraining ``name`` crops objects from (PRETRAIN.DATASETS, else
        TRAIN.DATASETS) and measures its accuracy on (PRETRAIN.VAL_DATASETS)."""
        key = ("pretrained", name)
        if key not in self._datasets_cache:
            entry = self.pretrained_body(name)
            cfg = self._load_config(entry.config, self.pretrained_overrides(name),
                                    f"pretrained body '{name}'")
            train_sets = tuple(cfg.PRETRAIN.DATASETS) or tuple(cfg.TRAIN.DATASETS)
            self._datasets_cache[key] = (train_sets, tuple(cfg.PRETRAIN.VAL_DATASETS))
        return self._datasets_cache[key]

    def pretrained_overrides(self, name):
        """Override list of the pretraining ``name``: the manifest's plus the data locations."""
        return list(self.overrides) + self._data_overrides()

    def pretrained_inputs(self, name):
        """Weights files the baseline ``name`` starts from (empty without weights_from)."""
        body = self.baseline(name).weights_from
        return [self.layout.pretrained_weights(body)] if body else []

    def _data_overrides(self):
        overrides = []
        if self.data_root:
            overrides += ["DATA_ROOT", self.data_root]
        if self.dataset_catalog:
            overrides += ["DATASET_CATALOG_FILE", self.dataset_catalog]
        return overrides

    def _load_config(self, path, overrides, what):
        from detectron_lib.config import load_config

        if not Path(path).is_file():
            raise ConfigError(f"{self.source}: {what}: config file {path} not found; fix its "
                              f"'config' entry")
        return load_config(path, overrides)

    def rpn_consumers(self, rpn_name):
        """Names of the baselines trained on the proposals of ``rpn_name``."""
        return [b.name for b in self.baselines.values() if b.proposals_from == rpn_name]

    def base_overrides(self, name):
        """Manifest-level then baseline overrides, plus the data locations and NUM_GPUS the
        DAG decides. Used to read the baseline's datasets, before proposal files exist."""
        baseline = self.baseline(name)
        overrides = list(self.overrides) + list(baseline.overrides) + self._data_overrides()
        if baseline.weights_from:
            overrides += ["TRAIN.WEIGHTS", self.layout.pretrained_weights(baseline.weights_from)]
        overrides += ["NUM_GPUS", str(baseline.resources.num_workers)]
        overrides += ["OUTPUT_DIR", self.layout.train_dir(name)]
        return overrides

    def _baseline_facts(self, name):
        """(TRAIN.DATASETS, TEST.DATASETS, URLs its training downloads) of a baseline's
        config after its overrides, read once.

        Proposal files are emptied for this lookup: they are the DAG's to decide, and a
        Detectron Fast R-CNN config lists its own ones (one per dataset of its own).
        """
        if name not in self._datasets_cache:
            cfg = self._load_config(self.baseline(name).config, self.base_overrides(name) + [
                "TRAIN.PROPOSAL_FILES", "()", "TEST.PROPOSAL_FILES", "()",
                "TEST.PRECOMPUTED_PROPOSALS", "False"], f"baseline '{name}'")
            urls = (cfg.TRAIN.WEIGHTS,) if is_url(cfg.TRAIN.WEIGHTS) else ()
            self._datasets_cache[name] = (tuple(cfg.TRAIN.DATASETS), tuple(cfg.TEST.DATASETS),
                                          urls)
        return self._datasets_cache[name]

    def datasets(self, name):
        """(TRAIN.DATASETS, TEST.DATASETS) of a baseline's config after its overrides."""
        return self._baseline_facts(name)[:2]

    def download_urls(self, name):
        """URLs the training of baseline ``name`` reads (its TRAIN.WEIGHTS, when a URL, e.g.
        Detectron's ImageNet bodies); the DAG fetches each once (fetch_weights)."""
        return self._baseline_facts(name)[2]

    def download_inputs(self, name):
        """Where the files of download_urls(name) are once fetched: inputs of its training."""
        return [self.layout.download(download_name(url)) for url in self.download_urls(name)]

    def all_downloads(self):
        """{download_name: URL} for every URL some baseline's training reads."""
        return {download_name(url): url
                for name in self.baselines for url in self.download_urls(name)}

    def config_overrides(self, name):
        """The full ``KEY VALUE`` override list the DAG passes to every stage of ``name``:
        base_overrides; for a baseline whose training reads URLs, DOWNLOAD_CACHE, where the
        DAG fetched them; for a baseline on precomputed proposals, the proposal files its RPN
        baseline dumps for each of its datasets."""
        overrides = self.base_overrides(name)
        if self.download_urls(name):
            overrides += ["DOWNLOAD_CACHE", self.layout.download_cache]
        rpn = self.baseline(name).proposals_from
        if rpn is None:
            return overrides
        train_sets, test_sets = self.datasets(name)
        return overrides + [
            "TRAIN.PROPOSAL_FILES", _as_tuple(self.layout.proposals(rpn, d) for d in train_sets),
            "TEST.PROPOSAL_FILES", _as_tuple(self.layout.proposals(rpn, d) for d in test_sets),
        ]

    def proposal_datasets(self, rpn_name):
        """Datasets the RPN baseline ``rpn_name`` must dump proposals for, sorted."""
        needed = set()
        for consumer in self.rpn_consumers(rpn_name):
            train_sets, test_sets = self.datasets(consumer)
            needed.update(train_sets, test_sets)
        return sorted(needed)

    def proposal_inputs(self, name, split):
        """Proposal files ``name`` reads for its 'train' or 'test' datasets (empty without
        proposals_from)."""
        rpn = self.baseline(name).proposals_from
        if rpn is None:
            return []
        train_sets, test_sets = self.datasets(name)
        return [self.layout.proposals(rpn, d) for d in (train_sets if split == "train" else test_sets)]

    def dumped_evaluation_inputs(self, name):
        """For an RPN baseline that dumps proposals for each of its TEST.DATASETS, the dumps'
        metrics files, which hold its evaluation (recall, inference time); else empty."""
        dumped = self.proposal_datasets(name)
        _, test_sets = self.datasets(name)
        if not dumped or not set(test_sets) <= set(dumped):
            return []
        return [self.layout.proposal_metrics(name, d) for d in test_sets]

    def all_datasets(self):
        """Every dataset some baseline trains or tests on, sorted."""
        names = set()
        for name in self.baselines:
            train_sets, test_sets = self.datasets(name)
            names.update(train_sets, test_sets)
        for name in self.pretrained:
            train_sets, val_sets = self.pretrain_datasets(name)
            names.update(train_sets, val_sets)
        return sorted(names)

    def missing_dataset_files(self):
        """(dataset, path) for each annotation file or image directory of a non-generated
        dataset that is not on disk yet, i.e. what the user must download before running."""
        from detectron_lib.data.catalog import (
            get_dataset,
            register_datasets_from_yaml,
            resolve_data_root,
        )

        if self.dataset_catalog:
            register_datasets_from_yaml(self.dataset_catalog)
        root = resolve_data_root(self.data_root or None)
        missing = []
        for dataset in self.all_datasets():
            entry = get_dataset(dataset)
            if entry.synthetic is not None:
                continue
            annotation, images = entry.annotation_path(root), entry.image_path(root)
            if not annotation.is_file():
                missing.append((dataset, str(annotation)))
            if not images.is_dir():
                missing.append((dataset, str(images)))
        return missing


def download_name(url):
    """The path of ``url``'s file inside a download cache: '<host>/<path of the URL>'."""
    return cache_path_for(url, "").as_posix()


def _as_tuple(paths):
    """A Python tuple literal of quoted paths, as a config override value."""
    return "(" + "".join(f"'{p}'," for p in paths) + ")"


def join_overrides(overrides):
    """Shell-quoted ``KEY VALUE ...`` for a rule's command line."""
    return shlex.join(str(item) for item in overrides)


def baseline_command(name, manifest_file=None):
    """The shell command that makes the DAG build baseline ``name`` (its training, evaluation
    and run files: the Snakefile's ``baseline_<name>`` target), run in the DAG's working
    directory (the repository root). ``manifest_file``, as seen from there, is passed as
    --configfile unless it is the Snakefile's default manifest (None: that default)."""
    command = ["snakemake", "--cores", "all", "--profile", "workflow/profiles/default",
               f"baseline_{name}"]
    if manifest_file is not None and Path(manifest_file) != Path(DEFAULT_MANIFEST):
        command += ["--configfile", str(manifest_file)]   # after the target: it takes several
    return shlex.join(command)


def _resources(entry, defaults, where):
    merged = dict(DEFAULT_RESOURCES)
    merged.update(defaults or {})
    merged.update(entry or {})
    unknown = set(merged) - set(DEFAULT_RESOURCES)
    if unknown:
        raise ConfigError(f"{where}: unknown resources {sorted(unknown)}; use "
                          f"{', '.join(DEFAULT_RESOURCES)}")
    try:
        resources = Resources(**{k: int(v) for k, v in merged.items()})
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: resources must be whole numbers, got {merged}") from None
    if resources.nodes < 1:
        raise ConfigError(f"{where}: resources: nodes must be 1 or more, got {resources.nodes}")
    return resources


def _overrides(value, where):
    value = list(value or [])
    if len(value) % 2:
        raise ConfigError(f"{where}: overrides must be KEY VALUE pairs; got an odd number of "
                          f"items {value}")
    return tuple(str(v) for v in value)


def _check_section(section, where):
    """ConfigError naming ``where`` unless ``section`` is a key of SECTIONS."""
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section '{section}'; use one of "
                          f"{', '.join(SECTIONS)}")


def _section_notes(value, source):
    """The manifest's 'notes': section key -> tuple of bullet strings."""
    notes = {}
    for section, bullets in (value or {}).items():
        _check_section(section, f"{source}: notes")
        if isinstance(bullets, str) or not all(isinstance(b, str) for b in bullets or ()):
            raise ConfigError(f"{source}: notes of section '{section}' must be a list of "
                              f"strings, one per bullet")
        notes[section] = tuple(bullets or ())
    return notes


def parse_manifest(document, source="<manifest>"):
    """A ZooManifest from a manifest mapping (already schema-checked or not); ConfigError
    names the entry at fault for any missing key, unknown section or broken dependency."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: a zoo manifest must be a mapping with name, table and "
                          f"baselines")
    for key in ("name", "table", "baselines"):
        if not document.get(key):
            raise ConfigError(f"{source}: missing '{key}'; see configs/zoo/shapes.yaml")
    if not isinstance(document["baselines"], dict):
        raise ConfigError(f"{source}: 'baselines' must map baseline names to entries")
    defaults = document.get("default_resources")
    pretrained = {}
    for name, entry in (document.get("pretrained") or {}).items():
        where = f"{source}: pretrained body '{name}'"
        if not isinstance(entry, dict) or "config" not in entry:
            raise ConfigError(f"{where} needs 'config'")
        pretrained[str(name)] = Pretrained(str(name), str(entry["config"]),
                                           _resources(entry.get("resources"), defaults, where))
    baselines = {}
    for name, entry in document["baselines"].items():
        where = f"{source}: baseline '{name}'"
        if not isinstance(entry, dict) or "config" not in entry or "section" not in entry:
            raise ConfigError(f"{where} needs 'config' and 'section'")
        if not isinstance(entry.get("start_early", False), bool):
            raise ConfigError(f"{where}: start_early must be true or false, got "
                              f"{entry['start_early']!r}")
        _check_section(entry["section"], where)
        baselines[name] = Baseline(
            name=str(name), config=str(entry["config"]), section=entry["section"],
            resources=_resources(entry.get("resources"), defaults, where),
            proposals_from=entry.get("proposals_from"),
            weights_from=entry.get("weights_from"),
            overrides=_overrides(entry.get("overrides"), where),
            backbone=entry.get("backbone"), lr_schd=entry.get("lr_schd"),
            start_early=entry.get("start_early", False))
    for baseline in baselines.values():
        if baseline.weights_from is not None and baseline.weights_from not in pretrained:
            raise ConfigError(f"{source}: baseline '{baseline.name}' starts from pretrained body "
                              f"'{baseline.weights_from}', which the manifest's 'pretrained' "
                              f"section does not define")
        rpn = baseline.proposals_from
        if rpn is None:
            continue
        if rpn not in baselines:
            raise ConfigError(f"{source}: baseline '{baseline.name}' takes proposals from "
                              f"'{rpn}', which is not a baseline of this manifest")
        if baselines[rpn].section != "rpn" or baselines[rpn].proposals_from is not None:
            raise ConfigError(f"{source}: baseline '{baseline.name}' takes proposals from "
                              f"'{rpn}', which must be an RPN baseline (section: rpn) that "
                              f"trains on images, not on proposals")
    return ZooManifest(
        name=str(document["name"]), table=str(document["table"]), baselines=baselines,
        pretrained=pretrained,
        title=document.get("title", ""), description=document.get("description", ""),
        notes=_section_notes(document.get("notes"), source),
        results_dir=document.get("results_dir", "results"),
        data_root=document.get("data_root", "") or "",
        dataset_catalog=document.get("dataset_catalog", "") or "",
        overrides=_overrides(document.get("overrides"), source), source=source)


def load_manifest(path):
    """Read and check a zoo manifest YAML file."""
    try:
        with open(path) as f:
            document = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"zoo manifest {path} not found; see configs/zoo/") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"zoo manifest {path} is not valid YAML: {e}") from None
    return parse_manifest(document, source=str(path))
