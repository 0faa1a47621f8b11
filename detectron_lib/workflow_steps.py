"""The model-zoo DAG's jobs: one function per Snakemake rule, and ``python -m
detectron_lib.workflow_steps STEP ...`` to run it (rules hold no logic of their own).

    prepare-dataset  materialize a catalog dataset, write a marker JSON
    mlflow-init      create the tracking store and the zoo's experiment, once
    train            train a baseline (a parent MLflow run + a 'train' child), measure time,
                     memory and hardware into train_stats.json
    dump-proposals   write an RPN baseline's proposals for one dataset ('proposals' child)
    evaluate         evaluate a baseline into metrics.json ('evaluate' child)
    zoo-table        render MODEL_ZOO.md from the files above

Every output is written atomically. Under torchrun only rank 0 writes files or tracks.
"""
import argparse
import functools
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from detectron_lib.engine.train_log import read_train_log
from detectron_lib.errors import DetectronError
from detectron_lib.utils.io import write_json_atomic
from detectron_lib.utils.ranks import is_main_process
from detectron_lib.utils.malloc import keep_freed_memory

logger = logging.getLogger("detectron_lib.workflow_steps")

# -- helpers -----------------------------------------------------------------------------------
def set_worker_threads(threads):
    """Split a job's ``threads`` among its torchrun workers (LOCAL_WORLD_SIZE) and set
    OMP_NUM_THREADS and torch's intra-op threads accordingly; returns the per-worker count."""
    workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    per_worker = max(1, int(threads) // max(1, workers))
    os.environ["OMP_NUM_THREADS"] = str(per_worker)
    import torch

    torch.set_num_threads(per_worker)
    return per_worker


def put_interpreter_first_on_path():
    """Put the folder of this Python interpreter (e.g. .venv/bin) first on PATH, so that
    the ``python`` and ``torchrun`` of DAG rule shells are this environment's, activated or
    not. Returns the new PATH."""
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return os.environ["PATH"]


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


def peak_memory_gb(device_type):
    """Peak memory of this process in GB: allocated CUDA memory on GPU, peak RSS on CPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # KB on Linux


def _load_cfg(cfg_file, overrides):
    from detectron_lib.config import load_config
    from detectron_lib.data.catalog import register_datasets_from_cfg

    cfg = load_config(cfg_file, overrides)
    register_datasets_from_cfg(cfg)
    return cfg


# -- steps -------------------------------------------------------------------------------------
def prepare_dataset(name, output, data_root=None, catalog_file=None):
    """Materialize dataset ``name`` (generate a synthetic one; check a downloaded one), check
    that every image decodes (data.verify, cached for the training jobs) and write ``output``:
    {"dataset", "annotation_file"}."""
    from detectron_lib.data.catalog import materialize_dataset, register_datasets_from_yaml
    from detectron_lib.data.verify import verify_dataset_images

    if catalog_file:
        register_datasets_from_yaml(catalog_file)
    annotation_file = materialize_dataset(name, data_root or None)
    verify_dataset_images(name, data_root or None)
    document = {"dataset": name, "annotation_file": str(annotation_file)}
    write_json_atomic(output, document, indent=1, sort_keys=True)
    return document


def init_tracking(experiment_name, artifact_root, output, tracking=True):
    """Create the tracking store and the zoo's experiment (artifacts under ``artifact_root``)
    and record them in ``output``."""
    from detectron_lib.tracking import init_experiment, make_tracker

    artifact_location = Path(artifact_root).absolute().as_uri()
    return init_experiment(make_tracker(tracking), experiment_name, artifact_location, output)


def pretrain_body(cfg_file, overrides, name, output, experiment_file, run_file, log_file=None,
                  tracking=True):
    """Pretrain body ``name`` into ``output`` (Detectron-format .pkl) in an MLflow run of its
    own (tagged stage 'pretrain'), whose id goes to ``run_file``; returns the summary."""
    from detectron_lib.engine.pretrain import pretrain_backbone
    from detectron_lib.tracking import make_tracker
    from detectron_lib.tracking.runs import read_json, standard_tags

    cfg = _load_cfg(cfg_file, overrides)
    tracker = make_tracker(tracking)
    experiment = read_json(experiment_file, "MLflow experiment file")
    experiment_id = tracker.ensure_experiment(experiment["experiment_name"])
    datasets = ",".join(cfg.PRETRAIN.DATASETS or cfg.TRAIN.DATASETS)
    run_id = tracker.start_run(experiment_id, f"pretrain {name}",
                               standard_tags(name, experiment["experiment_name"], "pretrain",
                                             "pretrain", datasets))
    try:
        tracker.log_params(run_id, cfg.to_flat_dict())
        summary = pretrain_backbone(cfg, output)
        tracker.log_metrics(run_id, {k: summary[k] for k in ("train_time_s", "val_accuracy")
                                     if k in summary})
        tracker.log_artifacts(run_id, [f"{output}.json", log_file])
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")
    write_json_atomic(run_file, {"run_id": run_id, "experiment_id": experiment_id,
                                 "pretrained": name}, indent=1, sort_keys=True)
    return summary


def train_baseline(cfg_file, overrides, zoo, baseline, experiment_file, run_file, stats_file,
                   log_file=None, tracking=True):
    """Train one baseline and record it.

    Writes (rank 0): the trainer's outputs in OUTPUT_DIR, ``run_file`` (the parent MLflow
    run), ``stats_file``: train_time_total_s, train_time_s_per_iter (median), train_mem_gb,
    hardware, model_type, ims_per_gpu, num_gpus, max_iter. Logs the flattened config as
    params, the per-iteration losses/lr/time with their iteration as step, and config,
    train log and job log as artifacts.
    """
    from detectron_lib.engine.trainer import TRAIN_LOG, resolve_device, train
    from detectron_lib.tracking import make_tracker, stage_run, start_parent_run
    from detectron_lib.zoo.table import model_type

    cfg = _load_cfg(cfg_file, overrides)
    output_dir = Path(cfg.OUTPUT_DIR)
    # Snakemake reruns this job when its config changed: results of the old config go.
    if not is_main_process():
        train(cfg, overwrite=True)
        return None

    tracker = make_tracker(tracking)
    dataset = ",".join(cfg.TRAIN.DATASETS)
    parent_id = start_parent_run(tracker, experiment_file, run_file, baseline, zoo, dataset)
    params = cfg.to_flat_dict()
    tracker.log_params(parent_id, params)
    try:
        with stage_run(tracker, run_file, "train", "train", dataset) as (_, child_id):
            tracker.log_params(child_id, params)
            start = time.perf_counter()
            weights = train(cfg, overwrite=True)
            total_s = time.perf_counter() - start
            records = read_train_log(output_dir / TRAIN_LOG)
            stats = {
                "train_time_total_s": total_s,
                "train_time_s_per_iter": (statistics.median(r["time"] for r in records)
                                          if records else None),
                "train_mem_gb": peak_memory_gb(resolve_device(cfg.DEVICE).type),
                "hardware": hardware_description(),
                "model_type": model_type(cfg),
                "ims_per_gpu": int(cfg.TRAIN.IMS_PER_BATCH),
                "num_gpus": int(cfg.NUM_GPUS),
                "max_iter": int(cfg.SOLVER.MAX_ITER),
                "config": str(cfg_file),
                "weights": str(weights),
            }
            write_json_atomic(stats_file, stats, indent=1, sort_keys=True)
            tracker.log_metric_history(child_id, [
                (r["iter"], None, {k: v for k, v in r.items() if k != "iter"}) for r in records])
            summary = {k: stats[k] for k in ("train_time_total_s", "train_time_s_per_iter",
                                             "train_mem_gb") if stats[k] is not None}
            tracker.log_metrics(child_id, summary)
            tracker.log_metrics(parent_id, summary)
            tracker.set_tags(parent_id, {"model_type": stats["model_type"],
                                         "hardware": stats["hardware"]})
            tracker.log_artifacts(child_id, [output_dir / "config.yaml", output_dir / TRAIN_LOG,
                                             stats_file, log_file])
    except BaseException:
        tracker.end_run(parent_id, "FAILED")
        raise
    return stats


def dump_baseline_proposals(cfg_file, overrides, weights, dataset, output, metrics_file,
                            run_file, log_file=None, tracking=True):
    """Write an RPN baseline's proposals for ``dataset`` to ``output`` and their counts to
    ``metrics_file``, with their recall (proposals/AR@100, AR@1000, ...) when ``dataset`` is
    one of the baseline's TEST.DATASETS: recall on the training set's millions of
    proposals would cost pycocotools minutes of the DAG's time and is not reported."""
    from detectron_lib.evaluation.metrics import write_metrics
    from detectron_lib.inference.engine import dump_proposals
    from detectron_lib.tracking import make_tracker, stage_run

    cfg = _load_cfg(cfg_file, overrides)
    recall = dataset in cfg.TEST.DATASETS
    if not is_main_process():
        dump_proposals(cfg, weights, dataset, output, recall)
        return None
    tracker = make_tracker(tracking)
    with stage_run(tracker, run_file, "proposals", "dump_proposals", dataset,
                   run_name=f"proposals {dataset}") as (_, child_id):
        metrics = dump_proposals(cfg, weights, dataset, output, recall)
        write_metrics(metrics_file, metrics)
        tracker.log_metrics(child_id, metrics)
        tracker.log_artifacts(child_id, [metrics_file, log_file])
    return metrics


def evaluate_baseline(cfg_file, overrides, weights, output_dir, run_file, log_file=None,
                      tracking=True, proposal_metrics=()):
    """Evaluate a baseline's weights on its TEST.DATASETS into ``output_dir``/metrics.json;
    the results go to the 'evaluate' child run and the parent run, which this step ends.

    An RPN baseline whose proposals the DAG dumps for its TEST.DATASETS passes the dumps'
    metrics files as ``proposal_metrics``: their recall is its evaluation (the same
    inference, not run twice)."""
    from detectron_lib.inference.engine import METRICS_FILE, evaluate_from_proposal_dumps, test
    from detectron_lib.tracking import make_tracker, stage_run

    cfg = _load_cfg(cfg_file, overrides)
    if proposal_metrics:
        evaluate = functools.partial(evaluate_from_proposal_dumps, cfg, proposal_metrics, output_dir)
    else:
        evaluate = functools.partial(test, cfg, weights, output_dir)
    if not is_main_process():
        evaluate()
        return None
    tracker = make_tracker(tracking)
    dataset = ",".join(cfg.TEST.DATASETS)
    parent_id = None
    try:
        with stage_run(tracker, run_file, "evaluate", "evaluate", dataset) as (parent_id, child_id):
            metrics = evaluate()
            tracker.log_metrics(child_id, metrics)
            tracker.log_metrics(parent_id, metrics)
            tracker.log_artifacts(child_id, [Path(output_dir) / METRICS_FILE, log_file])
    except BaseException:
        tracker.end_run(parent_id, "FAILED")
        raise
    tracker.end_run(parent_id, "FINISHED")
    return metrics


def zoo_table(manifest_document, output):
    """Render the table of a manifest (given as its parsed mapping) to ``output``."""
    from detectron_lib.zoo.manifest import parse_manifest
    from detectron_lib.zoo.table import write_model_zoo

    return write_model_zoo(parse_manifest(manifest_document), output)


# -- command line ------------------------------------------------------------------------------
def _add_run_args(parser):
    parser.add_argument("--cfg", required=True, help="baseline config YAML")
    parser.add_argument("--run-file", required=True, help="the baseline's MLflow run JSON")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the whole job")
    parser.add_argument("--log-file", default=None, help="job log to attach as an artifact")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m detectron_lib.workflow_steps",
                                     description="Jobs of the model-zoo DAG.")
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("prepare-dataset", help="materialize a catalog dataset")
    p.add_argument("dataset")
    p.add_argument("--output", required=True)
    p.add_argument("--data-root", default="")
    p.add_argument("--catalog", default="", help="DATASET_CATALOG_FILE to register first")

    p = sub.add_parser("mlflow-init", help="create the tracking store and the experiment")
    p.add_argument("--experiment", required=True)
    p.add_argument("--artifact-root", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--no-tracking", action="store_true")

    p = sub.add_parser("pretrain", help="pretrain a body on object crops")
    p.add_argument("--name", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--experiment-file", required=True)
    _add_run_args(p)

    p = sub.add_parser("train", help="train a baseline")
    p.add_argument("--zoo", required=True)
    p.add_argument("--baseline", required=True)
    p.add_argument("--experiment-file", required=True)
    p.add_argument("--stats-file", required=True)
    _add_run_args(p)

    p = sub.add_parser("dump-proposals", help="write an RPN baseline's proposals")
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--metrics-file", required=True)
    _add_run_args(p)

    p = sub.add_parser("evaluate", help="evaluate a baseline")
    p.add_argument("--weights", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--proposal-metrics", action="append", default=[], metavar="FILE",
                   help="an RPN baseline's proposal metrics of a TEST.DATASETS entry (once "
                        "per entry, in order): they hold its evaluation, no inference runs")
    _add_run_args(p)

    p = sub.add_parser("zoo-table", help="render MODEL_ZOO.md")
    p.add_argument("--manifest-json", required=True, help="the zoo manifest as JSON text")
    p.add_argument("--output", required=True)
    return parser


def run_step(args):
    """Dispatch parsed arguments to their step function."""
    if args.step == "prepare-dataset":
        return prepare_dataset(args.dataset, args.output, args.data_root, args.catalog)
    if args.step == "mlflow-init":
        return init_tracking(args.experiment, args.artifact_root, args.output,
                             tracking=not args.no_tracking)
    if args.step == "zoo-table":
        return zoo_table(json.loads(args.manifest_json), args.output)
    set_worker_threads(args.threads)
    keep_freed_memory()
    tracking = not args.no_tracking
    if args.step == "pretrain":
        return pretrain_body(args.cfg, args.opts, args.name, args.output, args.experiment_file,
                             args.run_file, args.log_file, tracking)
    if args.step == "train":
        return train_baseline(args.cfg, args.opts, args.zoo, args.baseline,
                              args.experiment_file, args.run_file, args.stats_file,
                              args.log_file, tracking)
    if args.step == "dump-proposals":
        return dump_baseline_proposals(args.cfg, args.opts, args.weights, args.dataset,
                                       args.output, args.metrics_file, args.run_file,
                                       args.log_file, tracking)
    return evaluate_baseline(args.cfg, args.opts, args.weights, args.output_dir, args.run_file,
                             args.log_file, tracking, args.proposal_metrics)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        run_step(args)
    except DetectronError as e:
        print(f"{args.step}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
