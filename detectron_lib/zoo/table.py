"""MODEL_ZOO.md, rendered from the files the DAG produced for each baseline.

Per baseline the table reads ``eval/metrics.json`` (AP, AR, inference time),
``train/train_stats.json`` (train time, memory, hardware, model type, images per GPU) and
``mlflow_run.json`` (the model id). Sections and columns follow Detectron's MODEL_ZOO.md.
Rows are sorted and nothing time-dependent is written, so unchanged metrics give a
byte-identical file.

A baseline whose files the DAG has not written yet still gets its row, with '-' for what is
missing and a mark in its model id cell ('not run', 'not evaluated', ...); a list below the
tables gives the command that builds each such baseline. A complete zoo has neither.
"""
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.evaluation.metrics import read_metrics
from detectron_lib.utils.io import atomic_write
from detectron_lib.zoo.manifest import SECTIONS, baseline_command

logger = logging.getLogger(__name__)

COLUMNS = (
    "backbone", "pretrained", "type", "lr schd", "im/ gpu", "train mem (GB)",
    "train time (s/iter)", "train time total (hr)", "inference time (s/im)", "box AP",
    "mask AP", "kp AP", "prop. AR", "model id", "download links",
)
MISSING = "-"
# What a row lacks without each of its baseline's files, in the order the marks list them.
LACKS = {"train stats": "not trained", "metrics": "not evaluated", "run file": "no MLflow run"}
NOT_RUN = "not run"   # the mark of a baseline with none of its files


def pretrained_label(baseline, cfg):
    """The 'pretrained' column: the manifest's pretrained body the baseline starts from, else
    the file name of its TRAIN.WEIGHTS (e.g. Detectron's R-50.pkl), else 'scratch'."""
    if baseline.weights_from:
        return baseline.weights_from
    weights = str(cfg.TRAIN.WEIGHTS)
    return weights.rstrip("/").rsplit("/", 1)[-1] if weights else "scratch"


def model_type(cfg):
    """Detectron's 'type' column for a config: RPN, RetinaNet, R-FCN, Kps, Mask, Faster or Fast."""
    if cfg.MODEL.RPN_ONLY:
        return "RPN"
    if cfg.MODEL.TYPE == "rfcn":
        return "R-FCN"
    if cfg.RETINANET.RETINANET_ON:
        return "RetinaNet"
    if cfg.MODEL.KEYPOINTS_ON:
        return "Mask+Kps" if cfg.MODEL.MASK_ON else "Kps"
    if cfg.MODEL.MASK_ON:
        return "Mask"
    return "Faster" if cfg.MODEL.FASTER_RCNN else "Fast"


@dataclass(frozen=True)
class ZooRow:
    """One baseline's numbers. Times in seconds, memory in GB, AP/AR as fractions; NaN where
    a number does not apply (e.g. mask AP of a Faster R-CNN) or its file is missing.
    missing: the keys of LACKS whose files the DAG has not written yet."""

    name: str
    section: str
    backbone: str
    pretrained: str
    model_type: str
    lr_schd: str
    ims_per_gpu: int
    train_mem_gb: float
    train_time_s_per_iter: float
    train_time_total_s: float
    inference_time_s_per_im: float
    box_ap: float
    mask_ap: float
    kp_ap: float
    proposal_ar: float
    run_id: str
    config_path: str
    weights_path: str
    hardware: str
    missing: tuple = ()

    @property
    def status(self):
        """'' for a complete row, NOT_RUN without any file, else what it lacks, e.g.
        'not evaluated'."""
        if len(self.missing) == len(LACKS):
            return NOT_RUN
        return ", ".join(LACKS[key] for key in LACKS if key in self.missing)


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{what} {path} is not valid JSON ({e}); delete it and rerun "
                           f"the DAG") from None


def _number(mapping, key):
    value = mapping.get(key)
    return math.nan if value is None else float(value)


def _configured_columns(manifest, baseline):
    """(type, pretrained) columns of a baseline from its config, for rows whose train stats
    do not say; ('-', '-') with a warning when the config does not load."""
    from detectron_lib.config import load_config

    try:
        cfg = load_config(baseline.config, manifest.config_overrides(baseline.name))
    except ConfigError as e:
        logger.warning("type and pretrained weights of baseline %s unknown: %s",
                       baseline.name, e)
        return MISSING, MISSING
    return model_type(cfg), pretrained_label(baseline, cfg)


def collect_rows(manifest):
    """ZooRows of every baseline of ``manifest`` from the files under its results folder; a
    file not written yet leaves its numbers NaN and is named in the row's ``missing``."""
    layout = manifest.layout
    rows = []
    for baseline in manifest.baselines.values():
        files = {"train stats": layout.train_stats(baseline.name),
                 "metrics": layout.metrics(baseline.name),
                 "run file": layout.run_file(baseline.name)}
        missing = tuple(key for key, path in files.items() if not os.path.exists(path))
        metrics = {} if "metrics" in missing else read_metrics(files["metrics"])
        stats = ({} if "train stats" in missing
                 else _read_json(files["train stats"], "train stats file"))
        run = {} if "run file" in missing else _read_json(files["run file"], "MLflow run file")
        if "model_type" in stats and "pretrained" in stats:
            type_, pretrained = stats["model_type"], stats["pretrained"]
        else:   # not trained yet, or by a version whose train stats did not name its weights
            type_, pretrained = _configured_columns(manifest, baseline)
            type_ = stats.get("model_type", type_)
        rows.append(ZooRow(
            name=baseline.name, section=baseline.section, backbone=baseline.backbone,
            model_type=type_, pretrained=pretrained,
            lr_schd=baseline.lr_schd,
            ims_per_gpu=stats.get("ims_per_gpu"),
            train_mem_gb=_number(stats, "train_mem_gb"),
            train_time_s_per_iter=_number(stats, "train_time_s_per_iter"),
            train_time_total_s=_number(stats, "train_time_total_s"),
            inference_time_s_per_im=metrics.get("inference_time_s_per_im", math.nan),
            box_ap=metrics.get("bbox/AP", math.nan), mask_ap=metrics.get("segm/AP", math.nan),
            kp_ap=metrics.get("keypoints/AP", math.nan),
            proposal_ar=metrics.get("proposals/AR@1000", math.nan),
            run_id=run.get("parent_run_id") or MISSING, config_path=baseline.config,
            weights_path=layout.weights(baseline.name), hardware=stats.get("hardware", ""),
            missing=missing))
    return rows


def _natural_key(text):
    """'R-101-FPN' after 'R-50-FPN': digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", str(text))]


def _fixed(value, digits, scale=1.0):
    return MISSING if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def _link(target, table_dir):
    return os.path.relpath(target, table_dir).replace(os.sep, "/")


def _model_id(row):
    """The run id, followed by the row's status when it is incomplete."""
    cell = f"`{row.run_id}`" if row.run_id != MISSING else MISSING
    if not row.status:
        return cell
    return f"*{row.status}*" if cell == MISSING else f"{cell} *{row.status}*"


def _row_cells(row, table_dir):
    links = f"[config]({_link(row.config_path, table_dir)})"
    if "train stats" not in row.missing:    # no link to weights not trained yet
        links = f"[model]({_link(row.weights_path, table_dir)}) / " + links
    return (
        row.backbone, row.pretrained, row.model_type, row.lr_schd,
        MISSING if row.ims_per_gpu is None else str(row.ims_per_gpu),
        _fixed(row.train_mem_gb, 1), _fixed(row.train_time_s_per_iter, 3),
        _fixed(row.train_time_total_s, 2, 1 / 3600), _fixed(row.inference_time_s_per_im, 3),
        _fixed(row.box_ap, 1, 100), _fixed(row.mask_ap, 1, 100), _fixed(row.kp_ap, 1, 100),
        _fixed(row.proposal_ar, 1, 100), _model_id(row), links,
    )


def render_model_zoo(manifest, rows, table_path, manifest_file=None):
    """MODEL_ZOO.md text: a header naming the zoo and hardware, then one table per section
    (Detectron's order; sections without rows are left out), then, if some rows are
    incomplete, the command building each (baseline_command of ``manifest_file``). Links are
    relative to ``table_path``'s folder."""
    table_dir = str(Path(table_path).parent) or "."
    title = manifest.title or f"Model zoo: {manifest.name}"
    lines = [f"# {title}", ""]
    if manifest.description:
        lines += [manifest.description.strip(), ""]
    lines += [
        f"Generated by the model-zoo DAG (`snakemake zoo_table`, zoo `{manifest.name}`) from "
        f"the metrics files under `{manifest.layout.root}/`; edit the configs or the manifest "
        f"and rerun rather than editing this file.",
        "",
        "- AP and AR are COCO-style, in percent (pycocotools) on each baseline's first test "
        "dataset; prop. AR is AR@1000 of the RPN's proposals.",
        "- Train mem is the peak memory of the training process (peak RSS on CPU, peak "
        "allocated CUDA memory on GPU); train time (s/iter) is the median iteration time; "
        "train time total is the wall time of the training job.",
        "- Pretrained is what a baseline's training starts from: a body pretrained by the DAG "
        "(`detectron pretrain`, its own MLflow run), the file its TRAIN.WEIGHTS names, or "
        "'scratch'.",
        "- Model id is the baseline's MLflow run id (see the tracking store); links point to "
        "the weights and config in this checkout.",
        "",
        "## Hardware",
        "",
    ]
    hardware = sorted({row.hardware for row in rows if row.hardware})
    lines += [f"- {h}" for h in hardware] or ["- not recorded"]
    for section, heading in SECTIONS.items():
        section_rows = sorted((r for r in rows if r.section == section), key=lambda r: (
            _natural_key(r.backbone), _natural_key(r.lr_schd), r.model_type, r.name))
        if not section_rows:
            continue
        lines += ["", f"## {heading}", "",
                  "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join(":---:" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(_row_cells(row, table_dir)) + " |" for row in section_rows]
        if manifest.notes.get(section):
            lines += ["", "**Notes:**", ""] + [f"- {note}" for note in manifest.notes[section]]
    incomplete = [row for row in rows if row.missing]
    if incomplete:
        lines += ["", "## Not run yet", "",
                  f"{len(incomplete)} of {len(rows)} baselines are not complete yet: their rows "
                  f"show `-` for the numbers still missing. The command beside each builds it "
                  f"(and the baselines it depends on); run it in the repository root:", ""]
        lines += [f"- {row.name} ({row.status}): "
                  f"`{baseline_command(row.name, manifest_file)}`" for row in incomplete]
    return "\n".join(lines) + "\n"


def write_model_zoo(manifest, output_path=None, manifest_file=None):
    """Collect the rows of ``manifest`` and write its table atomically, with a warning naming
    the incomplete rows; returns the path. ``manifest_file``: the manifest's path for the
    commands of incomplete rows (None: the Snakefile's default)."""
    output_path = Path(output_path or manifest.table)
    rows = collect_rows(manifest)
    incomplete = [f"{row.name} ({row.status})" for row in rows if row.missing]
    if incomplete:
        logger.warning("%s: %d of %d rows incomplete, rendered with '-' and listed with the "
                       "command building each under 'Not run yet': %s", output_path,
                       len(incomplete), len(rows), ", ".join(incomplete))
    text = render_model_zoo(manifest, rows, output_path, manifest_file)
    with atomic_write(output_path) as f:
        f.write(text)
    return output_path
