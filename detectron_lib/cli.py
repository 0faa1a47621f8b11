"""The ``detectron`` command: one subcommand per stage of an experiment.

Each subcommand parses its arguments here and calls one library function; heavy imports
happen inside the command so that ``detectron --help`` stays instant.
"""
import argparse
import sys

from detectron_lib.errors import DetectronError


def _add_cfg_args(parser):
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="config YAML (Detectron format)")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
        help="config overrides, e.g. TRAIN.SCALES '(400,)' SOLVER.BASE_LR 0.01",
    )


def cmd_config(args):
    """Print the merged, finalized config as YAML."""
    from detectron_lib.config import load_config

    cfg = load_config(args.cfg_file, args.opts)
    sys.stdout.write(cfg.dump())


def cmd_data(args):
    """Materialize a catalog dataset and print its annotation file's path."""
    from detectron_lib.data.catalog import materialize_dataset

    print(materialize_dataset(args.name, data_root=args.data_root))


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
    p.set_defaults(func=cmd_data)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DetectronError as e:
        print(f"detectron {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
