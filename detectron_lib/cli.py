"""The ``detectron`` command: one subcommand per stage of an experiment.

Each subcommand parses its arguments here and calls one library function; heavy imports
happen inside the command so that ``detectron --help`` stays instant.
"""
import argparse
import logging
import sys

from detectron_lib.errors import DetectronError
from detectron_lib.utils.malloc import keep_freed_memory
from detectron_lib.zoo.manifest import DEFAULT_MANIFEST

WEIGHTS_HELP = ("weights file or URL, of ours or Detectron (.pkl), detectron2 (.pkl/.pth) or "
                "torchvision (.pth), told apart by content (default: TEST.WEIGHTS)")
INFER_WEIGHTS_HELP = WEIGHTS_HELP[:-1] + "; or a model `detectron export` wrote (.onnx)"


def _add_cfg_args(parser):
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="config YAML (Detectron format)")
    parser.add_argument(
        "opts", nargs="*", metavar="KEY VALUE",
        help="config overrides, e.g. TRAIN.SCALES '(400,)' SOLVER.BASE_LR 0.01 (before or "
             "after the options)",
    )


def cmd_config(args):
    """Print the merged, finalized config as YAML."""
    from detectron_lib.config import load_config

    cfg = load_config(args.cfg_file, args.opts)
    sys.stdout.write(cfg.dump())


def cmd_data(args):
    """Materialize a catalog dataset and print its annotation file's path; with --verify,
    check that every image decodes and has its annotated size, and print a summary."""
    from detectron_lib.data.catalog import materialize_dataset

    print(materialize_dataset(args.name, data_root=args.data_root), flush=True)
    if args.verify:
        from detectron_lib.data.verify import verify_dataset_images

        checked, decoded = verify_dataset_images(args.name, data_root=args.data_root,
                                                 recheck=args.recheck)
        print(f"{args.name}: OK, {checked} images checked: all decode and have their "
              f"annotated size ({decoded} decoded, {checked - decoded} unchanged since a "
              f"previous check)")


def _command_run(args, stage):
    """The MLflow run of a training command (tracking.command_run), named after the config
    file; SIGTERM ends it KILLED, as Ctrl-C does."""
    from pathlib import Path

    from detectron_lib.tracking import command_run, interrupt_on_sigterm

    interrupt_on_sigterm()
    return command_run(not args.no_tracking, args.experiment, Path(args.cfg_file).stem, stage,
                       args.cfg_file)


def cmd_train(args):
    """Train a model, tracked live in MLflow; prints the path of model_final.pth."""
    from detectron_lib.config import load_config
    from detectron_lib.engine.trainer import train
    from detectron_lib.tracking import track_training

    cfg = load_config(args.cfg_file, args.opts)
    with _command_run(args, "train") as (tracker, run_id):
        print(track_training(tracker, run_id, cfg, lambda on_records: train(
            cfg, overwrite=args.overwrite, log_period=args.log_period, on_records=on_records)))


def cmd_pretrain(args):
    """Pretrain a config's ResNet or VGG16 body on object crops, tracked live in MLflow;
    prints the summary JSON."""
    import json

    from detectron_lib.config import load_config
    from detectron_lib.tracking import track_pretraining

    cfg = load_config(args.cfg_file, args.opts)
    with _command_run(args, "pretrain") as (tracker, run_id):
        summary = track_pretraining(tracker, run_id, cfg, args.output, args.log_period)
    print(json.dumps(summary, indent=1))


def _add_training_args(parser):
    parser.add_argument("--log-period", type=int, default=20, metavar="N",
                        help="log losses, lr and times every N iterations (default: 20)")
    parser.add_argument("--experiment", default="detectron",
                        help="MLflow experiment of the run (default: detectron); the store is "
                             "$MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def cmd_test(args):
    """Evaluate weights on TEST.DATASETS; prints the metrics JSON."""
    import json

    from detectron_lib.config import load_config
    from detectron_lib.inference.engine import test

    cfg = load_config(args.cfg_file, args.opts)
    print(json.dumps(test(cfg, args.weights), indent=1, sort_keys=True))


def cmd_proposals(args):
    """Write an RPN model's proposals for a dataset; prints their recall (AR@100/1000)."""
    import json

    from detectron_lib.config import load_config
    from detectron_lib.inference.engine import dump_proposals

    cfg = load_config(args.cfg_file, args.opts)
    metrics = dump_proposals(cfg, args.weights, args.dataset, args.output)
    print(json.dumps(metrics, indent=1, sort_keys=True))


def cmd_infer(args):
    """Detect objects in images and write them drawn as PNG files; prints each file written.
    Images that cannot be decoded are skipped, then named in one error (exit status 2)."""
    from detectron_lib.config import load_config
    from detectron_lib.inference.predictor import infer_images

    cfg = load_config(args.cfg_file, args.opts)
    for path in infer_images(cfg, args.weights, args.input, args.output, args.thresh,
                             write_json=args.json):
        print(path)


def cmd_export(args):
    """Write a model as an ONNX graph (one BGR image in, detections out); prints its path."""
    from detectron_lib.config import load_config
    from detectron_lib.export.onnx import export_model

    # The graph runs in float32, whatever precision the config picks for PyTorch.
    cfg = load_config(args.cfg_file, list(args.opts) + [
        "MODEL.BODY_PRECISION", "float32", "MODEL.HEAD_PRECISION", "float32"])
    print(export_model(cfg, args.weights, args.output))


# `detectron zoo STEP`: one handler per job of the model-zoo DAG (detectron_lib.zoo.steps),
# each given the --manifest file and a name from it.
def _load_zoo(args):
    from detectron_lib.zoo.manifest import load_manifest

    return load_manifest(args.manifest)


def cmd_zoo_table(args):
    """Render a zoo manifest's MODEL_ZOO.md table from the files the DAG produced; rows not
    run yet are marked and listed with the snakemake command building each."""
    from detectron_lib.zoo.table import write_model_zoo

    print(write_model_zoo(_load_zoo(args), args.output, args.manifest))


def cmd_zoo_step(args):
    """Run the zoo step ``args.step_function`` (detectron_lib.zoo.steps) on the manifest and
    the names the step's positional arguments give, with the job options it takes."""
    from detectron_lib.tracking import interrupt_on_sigterm
    from detectron_lib.zoo import steps

    interrupt_on_sigterm()  # a stopped job's MLflow runs end KILLED
    names = [getattr(args, name) for name in args.step_names]
    options = {key: getattr(args, key) for key in ("threads", "log_file") if hasattr(args, key)}
    if hasattr(args, "no_tracking"):
        options["tracking"] = not args.no_tracking
    getattr(steps, args.step_function)(_load_zoo(args), *names, **options)


def _add_zoo_parser(sub):
    """``detectron zoo STEP``; a step run by hand does what the DAG's job does."""
    zoo = sub.add_parser("zoo", help="the model-zoo DAG's steps, e.g. `detectron zoo table` "
                                     "(`snakemake reproduce_model_zoo` runs them all)",
                         description="The model-zoo DAG's jobs, one per Snakemake rule. Each "
                                     "takes a name from the zoo manifest and reads its config, "
                                     "overrides and paths from there.")
    steps = zoo.add_subparsers(dest="step", metavar="STEP", required=True)
    manifest = argparse.ArgumentParser(add_help=False)
    manifest.add_argument("--manifest", default=DEFAULT_MANIFEST,
                          help=f"zoo manifest YAML (default: {DEFAULT_MANIFEST})")
    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    job = argparse.ArgumentParser(add_help=False, parents=[manifest, tracking])
    job.add_argument("--threads", type=int, default=None,
                     help="CPU threads of the whole job, split among its torchrun workers "
                          "(default: the manifest entry's)")
    job.add_argument("--log-file", default=None, help="job log to attach as an MLflow artifact")

    p = steps.add_parser("fetch-weights", parents=[manifest],
                         help="download a URL a baseline's training reads into the zoo's "
                              "download cache (results/weights/)")
    p.add_argument("url", help="the URL, as the baseline's config gives it (TRAIN.WEIGHTS)")
    p.set_defaults(func=cmd_zoo_step, step_function="fetch_weights", step_names=["url"])

    p = steps.add_parser("prepare-dataset", parents=[manifest],
                         help="materialize and verify a dataset, write its marker file")
    p.add_argument("dataset", help="catalog dataset name, e.g. shapes_train")
    p.set_defaults(func=cmd_zoo_step, step_function="prepare_dataset", step_names=["dataset"])

    p = steps.add_parser("mlflow-init", parents=[manifest, tracking],
                         help="create the tracking store and the zoo's experiment")
    p.set_defaults(func=cmd_zoo_step, step_function="init_tracking", step_names=[])

    p = steps.add_parser("pretrain", parents=[job], help="pretrain a body of the manifest")
    p.add_argument("name", help="entry of the manifest's 'pretrained' section")
    p.set_defaults(func=cmd_zoo_step, step_function="pretrain", step_names=["name"])

    p = steps.add_parser("train", parents=[job], help="train a baseline, measure its time, "
                                                      "memory and hardware")
    p.add_argument("baseline", help="baseline name in the manifest")
    p.set_defaults(func=cmd_zoo_step, step_function="train", step_names=["baseline"])

    p = steps.add_parser("dump-proposals", parents=[job],
                         help="write an RPN baseline's proposals for a dataset")
    p.add_argument("rpn", help="RPN baseline name in the manifest")
    p.add_argument("dataset", help="catalog dataset name")
    p.set_defaults(func=cmd_zoo_step, step_function="dump_proposals",
                   step_names=["rpn", "dataset"])

    p = steps.add_parser("evaluate", parents=[job], help="evaluate a baseline into metrics.json")
    p.add_argument("baseline", help="baseline name in the manifest")
    p.set_defaults(func=cmd_zoo_step, step_function="evaluate", step_names=["baseline"])

    p = steps.add_parser("table", parents=[manifest],
                         help="render MODEL_ZOO.md from the zoo's metrics files")
    p.add_argument("--output", default=None, help="table to write (default: the manifest's)")
    p.set_defaults(func=cmd_zoo_table)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="detectron",
        description="Detectron on PyTorch: configs, datasets, training, evaluation and the model zoo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("config", help="print the merged, finalized config as YAML")
    _add_cfg_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("data", help="materialize a catalog dataset and print its annotation file")
    p.add_argument("name", help="catalog name, e.g. shapes_train, coco_2017_val")
    p.add_argument("--data-root", default=None,
                   help="data root (default: $DETECTRON_DATA_ROOT, else results/data)")
    p.add_argument("--verify", action="store_true",
                   help="also decode every image, check its size against the annotation and "
                        "list all bad files at once (exit status 2 if any); good results are "
                        "cached beside the annotation file by each image's size and mtime")
    p.add_argument("--recheck", action="store_true",
                   help="with --verify: decode every image even if unchanged since a check")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model (one process, or one per rank under torchrun)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the results OUTPUT_DIR holds of another training config and "
                        "train from the start (without it such a directory is an error)")
    _add_training_args(p)
    _add_cfg_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="pretrain the ResNet or VGG16 body on object crops (the "
                                        "stand-in for ImageNet), writing Detectron-format "
                                        "weights (.pkl)")
    p.add_argument("--output", required=True, help="weights file to write (.pkl)")
    _add_training_args(p)
    _add_cfg_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("test", help="evaluate weights on TEST.DATASETS, write metrics.json")
    p.add_argument("--weights", default="", help=WEIGHTS_HELP)
    _add_cfg_args(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("proposals", help="write an RPN model's proposals for a dataset (pkl)")
    p.add_argument("--weights", default="", help="weights of an RPN_ONLY model; " + WEIGHTS_HELP)
    p.add_argument("--dataset", required=True, help="catalog dataset name, e.g. shapes_train")
    p.add_argument("--output", required=True, help="proposal file to write (.pkl)")
    _add_cfg_args(p)
    p.set_defaults(func=cmd_proposals)

    p = sub.add_parser("infer", help="draw detections on images (like Detectron's infer_simple)")
    p.add_argument("--weights", default="", help=INFER_WEIGHTS_HELP)
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--output", required=True, help="directory for the PNG files")
    p.add_argument("--thresh", type=float, default=0.7, help="score threshold for drawing")
    p.add_argument("--json", action="store_true",
                   help="also write <image>.json: every detection's box (x1, y1, x2, y2 in input-"
                        "image pixels), label, score, mask (COCO RLE) and keypoints")
    _add_cfg_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("export", help="write a model as an ONNX graph for ONNX Runtime: a BGR "
                                      "image in, detections in its pixels out")
    p.add_argument("--weights", default="", help=WEIGHTS_HELP)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="graph format (onnx)")
    p.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    _add_cfg_args(p)
    p.set_defaults(func=cmd_export)

    _add_zoo_parser(sub)
    return parser


def parse_args(argv=None):
    """Parse the command line; KEY VALUE overrides may come before, between or after options."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown_options = [token for token in extras if token.startswith("--")]
    if unknown_options or (extras and not hasattr(args, "opts")):
        parser.error(f"unrecognized arguments: {' '.join(unknown_options or extras)}")
    if extras:
        args.opts = list(args.opts) + extras
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    keep_freed_memory()
    try:
        args.func(args)
    except DetectronError as e:
        command = " ".join(filter(None, (args.command, getattr(args, "step", None))))
        print(f"detectron {command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
