"""The model-zoo DAG's jobs, one function per Snakemake rule, run as ``detectron zoo STEP``.

Each step takes the zoo manifest and a name from it (a dataset, a pretrained body, a
baseline) and looks up everything else there: config file, overrides, datasets and every
path of the zoo's layout. The rules thus pass only a manifest path and a name, and a job
run by hand does exactly what the DAG's job does.

    fetch_weights    download a file a baseline's config names by URL into the zoo's
                     download cache (on the submit host: compute nodes may be offline)
    prepare_dataset  materialize a catalog dataset, write its marker JSON
    init_tracking    create the tracking store and the zoo's experiment, once
    pretrain         pretrain a body (an MLflow run of its own)
    train            train a baseline (a parent MLflow run + a 'train' child), measure time,
                     memory and hardware into train_stats.json
    dump_proposals   write an RPN baseline's proposals for one dataset ('proposals' child)
    evaluate         evaluate a baseline into metrics.json ('evaluate' child)

The four that run a model size their CPU threads with set_job_threads. The table
(the last rule) is ``zoo.table.write_model_zoo``. Every output is written atomically. Under
torchrun only rank 0 writes files or tracks (``utils.ranks``).
"""
import atexit
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from detectron_lib.engine.train_log import TRAIN_LOG, read_train_log
from detectron_lib.errors import ConfigError
from detectron_lib.utils.core_share import CoreShare
from detectron_lib.utils.download import cached_path, check_hash_in_name, offline_downloads
from detectron_lib.utils.io import write_json_atomic
from detectron_lib.utils.progress import peak_memory_gb
from detectron_lib.utils.ranks import is_main_process


# -- helpers -----------------------------------------------------------------------------------
def put_interpreter_first_on_path():
    """Put the folder of this Python interpreter (e.g. .venv/bin) first on PATH, so that the
    ``python`` and ``torchrun`` of the DAG's rule shells are this environment's, activated or
    not (called by workflow/rules/common.smk). Returns the new PATH."""
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return os.environ["PATH"]


SHARE_CORES_ENV = "DETECTRON_SHARE_CORES"   # set by workflow/rules/common.smk


def set_job_threads(threads, entry, layout):
    """Size the job's CPU threads; returns an ``on_records`` callback that re-sizes them
    (trainings call it each time they log), or None.

    A single-process job that Snakemake runs on this machine ($DETECTRON_SHARE_CORES holds
    its --cores; not inside a SLURM job) takes its share of those cores among the DAG's jobs
    running here (utils.core_share), so that a job running alone uses every core. Otherwise
    ``threads`` (None: the manifest ``entry``'s; Snakemake passes what it granted) are split
    among the job's torchrun workers (LOCAL_WORLD_SIZE). OMP_NUM_THREADS and torch's intra-op
    threads follow.
    """
    workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share_cores = os.environ.get(SHARE_CORES_ENV)
    if share_cores and workers == 1 and "SLURM_JOB_ID" not in os.environ:
        share = CoreShare(Path(layout.results_dir) / ".core-share", int(share_cores)).take()
        atexit.register(share.release)
        share.apply()
        return lambda records: share.apply()
    per_worker = max(1, int(threads or entry.resources.threads) // max(1, workers))
    os.environ["OMP_NUM_THREADS"] = str(per_worker)
    import torch

    torch.set_num_threads(per_worker)
    return None


def hardware_description():
    """One line naming what the numbers were measured on, e.g.
    'AMD EPYC, 2 CPU cores; PyTorch 2.4.0, CPU only'."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        accel = ", ".join(f"{gpus.count(g)}x {g}" for g in sorted(set(gpus)))
    else:
        accel = "CPU only"
    return f"{cpu}, {cores} CPU cores; PyTorch {torch.__version__}, {accel}"


def _load_cfg(cfg_file, overrides):
    """The config with the DAG's overrides, its datasets registered (DATASET_CATALOG_FILE)."""
    from detectron_lib.config import load_config
    from detectron_lib.data.catalog import register_datasets_from_cfg

    cfg = load_config(cfg_file, overrides)
    register_datasets_from_cfg(cfg)
    return cfg


def baseline_config(zoo, name):
    """Baseline ``name``'s config with the overrides the manifest gives every stage of it."""
    return _load_cfg(zoo.baseline(name).config, zoo.config_overrides(name))


# -- steps -------------------------------------------------------------------------------------
def fetch_weights(zoo, url):
    """Download ``url``, a URL some baseline's training reads, into the layout's download
    cache, checked (the byte count the server announced; the SHA-256 prefix of a torch.hub
    style name); a file already there is checked against such a prefix. Returns its path."""
    downloads = zoo.all_downloads()
    if url not in downloads.values():
        raise ConfigError(f"{zoo.source}: no baseline's config reads '{url}'; the URLs its "
                          f"trainings read are {', '.join(sorted(downloads.values())) or 'none'}")
    path = cached_path(url, zoo.layout.download_cache)
    check_hash_in_name(path)
    print(path)
    return path


def prepare_dataset(zoo, name):
    """Materialize dataset ``name`` (generate a synthetic one; check a downloaded one) under
    the manifest's data_root, check that every image decodes (data.verify, cached for the
    training jobs) and write its marker: {"dataset", "annotation_file"}."""
    from detectron_lib.data.catalog import materialize_dataset, register_datasets_from_yaml
    from detectron_lib.data.verify import verify_dataset_images

    if zoo.dataset_catalog:
        register_datasets_from_yaml(zoo.dataset_catalog)
    annotation_file = materialize_dataset(name, zoo.data_root or None)
    verify_dataset_images(name, zoo.data_root or None)
    document = {"dataset": name, "annotation_file": str(annotation_file)}
    write_json_atomic(zoo.layout.dataset_marker(name), document, indent=1, sort_keys=True)
    return document


def init_tracking(zoo, tracking=True):
    """Create the tracking store and the experiment named after the zoo and record them in
    the layout's experiment file. Its artifacts go under the layout's artifact_dir; with a
    tracking server (MLFLOW_TRACKING_URI=http://...), under the server's artifact root,
    uploaded through the server, so that compute nodes need not mount it."""
    from detectron_lib.tracking import init_experiment, is_tracking_server, make_tracker

    tracker = make_tracker(tracking)
    artifact_location = (None if is_tracking_server(tracker.uri)
                         else Path(zoo.layout.artifact_dir).absolute().as_uri())
    return init_experiment(tracker, zoo.name, artifact_location, zoo.layout.experiment_file)


def pretrain(zoo, name, threads=None, log_file=None, tracking=True):
    """Pretrain the manifest's body ``name`` into its Detectron-format .pkl in an MLflow run
    of its own (tagged stage 'pretrain', tracked live as ``detectron pretrain`` is), whose id
    goes to its run file; returns the summary."""
    from detectron_lib.tracking import make_tracker, track_pretraining, tracked_run
    from detectron_lib.tracking.runs import end_runs_left_running, read_json, standard_tags

    body = zoo.pretrained_body(name)
    layout = zoo.layout
    resize_threads = set_job_threads(threads, body, layout)
    output = layout.pretrained_weights(name)
    cfg = _load_cfg(body.config, zoo.pretrained_overrides(name))
    tracker = make_tracker(tracking)
    experiment = read_json(layout.experiment_file, "MLflow experiment file")
    experiment_id = tracker.ensure_experiment(experiment["experiment_name"])
    datasets = ",".join(cfg.PRETRAIN.DATASETS or cfg.TRAIN.DATASETS)
    tags = standard_tags(name, experiment["experiment_name"], "pretrain", "pretrain", datasets)
    end_runs_left_running(tracker, experiment_id, name)
    with tracked_run(tracker, experiment_id, f"pretrain {name}", tags) as run_id:
        summary = track_pretraining(tracker, run_id, cfg, output, job_log=log_file,
                                    on_records=resize_threads)
    write_json_atomic(layout.pretrained_run(name), {"run_id": run_id,
                                                    "experiment_id": experiment_id,
                                                    "pretrained": name},
                      indent=1, sort_keys=True)
    return summary


def train(zoo, name, threads=None, log_file=None, tracking=True):
    """Train baseline ``name`` and record it.

    Writes (rank 0): the trainer's outputs in OUTPUT_DIR, the run file (the parent MLflow
    run), the train stats: train_time_total_s, train_time_s_per_iter (median), train_mem_gb,
    hardware, model_type, pretrained, ims_per_gpu, num_gpus, max_iter. The 'train' child run
    is tracked as ``detectron train`` is (params, losses live, config, train log and weights),
    plus the stats and the job log; the parent gets the params and the summary numbers.

    URLs are read from the download cache alone (utils.download.offline_downloads): the
    DAG's fetch_weights jobs put them there, and compute nodes may have no internet access.
    """
    with offline_downloads():
        return _train(zoo, name, threads, log_file, tracking)


def _train(zoo, name, threads, log_file, tracking):
    """The body of ``train``, run with downloads off."""
    from detectron_lib.engine.distributed import resolve_device
    from detectron_lib.engine.trainer import train as run_training
    from detectron_lib.tracking import (
        end_run_after,
        make_tracker,
        stage_run,
        start_parent_run,
        track_training,
    )
    from detectron_lib.zoo.table import model_type, pretrained_label

    layout = zoo.layout
    resize_threads = set_job_threads(threads, zoo.baseline(name), layout)
    cfg = baseline_config(zoo, name)
    # Snakemake reruns this job when its config changed: results of the old config go.
    if not is_main_process():
        run_training(cfg, overwrite=True)
        return None

    tracker = make_tracker(tracking)
    dataset = ",".join(cfg.TRAIN.DATASETS)
    stats_file, run_file = layout.train_stats(name), layout.run_file(name)
    parent_id = start_parent_run(tracker, layout.experiment_file, run_file, name, zoo.name,
                                 dataset)
    tracker.log_params(parent_id, cfg.to_flat_dict())
    try:
        with stage_run(tracker, run_file, "train", "train", dataset) as (_, child_id):
            start = time.perf_counter()
            weights = track_training(tracker, child_id, cfg, lambda on_records: run_training(
                cfg, overwrite=True, on_records=on_records), on_records=resize_threads)
            total_s = time.perf_counter() - start
            records = read_train_log(Path(cfg.OUTPUT_DIR) / TRAIN_LOG)
            stats = {
                "train_time_total_s": total_s,
                "train_time_s_per_iter": (statistics.median(r["time"] for r in records)
                                          if records else None),
                "train_mem_gb": peak_memory_gb(resolve_device(cfg.DEVICE).type),
                "hardware": hardware_description(),
                "model_type": model_type(cfg),
                "pretrained": pretrained_label(zoo.baseline(name), cfg),
                "ims_per_gpu": int(cfg.TRAIN.IMS_PER_BATCH),
                "num_gpus": int(cfg.NUM_GPUS),
                "max_iter": int(cfg.SOLVER.MAX_ITER),
                "config": zoo.baseline(name).config,
                "weights": str(weights),
            }
            write_json_atomic(stats_file, stats, indent=1, sort_keys=True)
            summary = {k: stats[k] for k in ("train_time_total_s", "train_time_s_per_iter",
                                             "train_mem_gb") if stats[k] is not None}
            tracker.log_metrics(child_id, summary)
            tracker.log_metrics(parent_id, summary)
            tracker.set_tags(parent_id, {"model_type": stats["model_type"],
                                         "hardware": stats["hardware"]})
            tracker.log_artifacts(child_id, [stats_file, log_file])
    except BaseException as error:
        end_run_after(tracker, parent_id, error)
        raise
    return stats


def dump_proposals(zoo, rpn, dataset, threads=None, log_file=None, tracking=True):
    """Write RPN baseline ``rpn``'s proposals for ``dataset`` and their counts to the
    layout's proposal files, with their recall (proposals/AR@100, AR@1000, ...) when
    ``dataset`` is one of the baseline's TEST.DATASETS: recall on the training set's millions
    of proposals would cost pycocotools minutes of the DAG's time and is not reported."""
    from detectron_lib.evaluation.metrics import write_metrics
    from detectron_lib.inference.engine import dump_proposals as run_dump
    from detectron_lib.tracking import make_tracker, stage_run

    layout = zoo.layout
    set_job_threads(threads, zoo.baseline(rpn), layout)
    cfg = baseline_config(zoo, rpn)
    dump = functools.partial(run_dump, cfg, layout.weights(rpn), dataset,
                             layout.proposals(rpn, dataset), dataset in cfg.TEST.DATASETS)
    if not is_main_process():
        dump()
        return None
    metrics_file = layout.proposal_metrics(rpn, dataset)
    tracker = make_tracker(tracking)
    with stage_run(tracker, layout.run_file(rpn), "proposals", "dump_proposals", dataset,
                   run_name=f"proposals {dataset}") as (_, child_id):
        metrics = dump()
        write_metrics(metrics_file, metrics)
        tracker.log_metrics(child_id, metrics)
        tracker.log_artifacts(child_id, [metrics_file, log_file])
    return metrics


def evaluate(zoo, name, threads=None, log_file=None, tracking=True):
    """Evaluate baseline ``name``'s final weights on its TEST.DATASETS into its eval dir's
    metrics.json; the results go to the 'evaluate' child run and the parent run, which this
    step ends.

    An RPN baseline whose proposals the DAG dumps for its TEST.DATASETS is evaluated by the
    dumps' metrics files (manifest.dumped_evaluation_inputs): their recall is its evaluation
    (the same inference, not run twice)."""
    from detectron_lib.inference.engine import METRICS_FILE, evaluate_from_proposal_dumps, test
    from detectron_lib.tracking import end_run_after, make_tracker, stage_run

    layout = zoo.layout
    set_job_threads(threads, zoo.baseline(name), layout)
    output_dir = layout.eval_dir(name)
    cfg = baseline_config(zoo, name)
    proposal_metrics = zoo.dumped_evaluation_inputs(name)
    if proposal_metrics:
        run_evaluation = functools.partial(evaluate_from_proposal_dumps, cfg, proposal_metrics,
                                           output_dir)
    else:
        run_evaluation = functools.partial(test, cfg, layout.weights(name), output_dir)
    if not is_main_process():
        run_evaluation()
        return None
    tracker = make_tracker(tracking)
    dataset = ",".join(cfg.TEST.DATASETS)
    parent_id = None
    try:
        with stage_run(tracker, layout.run_file(name), "evaluate", "evaluate",
                       dataset) as (parent_id, child_id):
            metrics = run_evaluation()
            tracker.log_metrics(child_id, metrics)
            tracker.log_metrics(parent_id, metrics)
            tracker.log_artifacts(child_id, [Path(output_dir) / METRICS_FILE, log_file])
    except BaseException as error:
        end_run_after(tracker, parent_id, error)
        raise
    tracker.end_run(parent_id, "FINISHED")
    return metrics
