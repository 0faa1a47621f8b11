"""MODEL_ZOO.md rendering from metrics / train-stats / run files written by hand here.

Expected cells are hand-computed from those files (AP 0.3774 -> '37.7', 5400 s -> '1.50' hr,
NaN -> '-'); the layout is Detectron's (sections in its order, its column names). Rows of
baselines whose files are missing are rendered marked, and listed with their commands."""
import json
import math
from pathlib import Path

import pytest
import yaml

from detectron_lib.cli import main as cli_main
from detectron_lib.config import load_config
from detectron_lib.errors import DatasetError
from detectron_lib.evaluation.metrics import write_metrics
from detectron_lib.zoo.manifest import baseline_command, parse_manifest
from detectron_lib.zoo.table import (
    COLUMNS,
    collect_rows,
    model_type,
    pretrained_label,
    write_model_zoo,
)

MANIFEST = {
    "name": "toy", "title": "Toy zoo", "table": "docs/MODEL_ZOO.md",
    "baselines": {
        "e2e_mask_rcnn_R-101-FPN_1x": {"config": "configs/mask101.yaml", "section": "end_to_end"},
        "rpn_R-50-FPN_1x": {"config": "configs/rpn.yaml", "section": "rpn"},
        "e2e_faster_rcnn_R-50-FPN_1x": {"config": "configs/f50.yaml", "section": "end_to_end"},
    },
    "notes": {"rpn": ["AR@1000 on the toy set.", "One RPN."]},
}
FILES = {
    "e2e_mask_rcnn_R-101-FPN_1x": (
        {"bbox/AP": 0.3774, "segm/AP": 0.3412, "inference_time_s_per_im": 0.1234},
        {"model_type": "Mask", "pretrained": "R-101.pkl", "ims_per_gpu": 2, "train_mem_gb": 8.64,
         "train_time_s_per_iter": 0.8766, "train_time_total_s": 5400.0,
         "hardware": "8x V100"}, "a" * 32),
    "rpn_R-50-FPN_1x": (
        {"proposals/AR@1000": 0.5712, "bbox/APl": math.nan, "inference_time_s_per_im": 0.05},
        {"model_type": "RPN", "pretrained": "R-50-GN", "ims_per_gpu": 2, "train_mem_gb": 3.0,
         "train_time_s_per_iter": 0.4, "train_time_total_s": 3600.0,
         "hardware": "2x CPU"}, "b" * 32),
    "e2e_faster_rcnn_R-50-FPN_1x": (
        {"bbox/AP": 0.3665, "inference_time_s_per_im": 0.1},
        {"model_type": "Faster", "pretrained": "scratch", "ims_per_gpu": 2, "train_mem_gb": None,
         "train_time_s_per_iter": 0.5, "train_time_total_s": 1800.0,
         "hardware": "8x V100"}, None),
}


@pytest.fixture
def toy_zoo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    zoo = parse_manifest(MANIFEST)
    for name, (metrics, stats, run_id) in FILES.items():
        write_metrics(zoo.layout.metrics(name), metrics)
        Path(zoo.layout.train_stats(name)).parent.mkdir(parents=True, exist_ok=True)
        Path(zoo.layout.train_stats(name)).write_text(json.dumps(stats))
        Path(zoo.layout.run_file(name)).write_text(json.dumps({"parent_run_id": run_id}))
    return zoo


def _table_rows(text, heading):
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "backbone" not in line]


def test_rows_sections_and_cells(toy_zoo):
    text = write_model_zoo(toy_zoo).read_text()
    assert text.startswith("# Toy zoo\n")
    assert text.index("## RPN Proposal Baselines") < text.index(
        "## End-to-End Faster & Mask R-CNN Baselines")
    assert "Fast & Mask R-CNN Baselines Using Precomputed" not in text   # no rows, no section
    assert "| " + " | ".join(COLUMNS) + " |" in text
    assert "- 2x CPU\n- 8x V100\n" in text                               # hardware, sorted

    (rpn,) = _table_rows(text, "RPN Proposal Baselines")
    assert rpn[:13] == ["R-50-FPN", "R-50-GN", "RPN", "1x", "2", "3.0", "0.400", "1.00",
                        "0.050", "-", "-", "-", "57.1"]
    assert rpn[13] == "`" + "b" * 32 + "`"
    assert rpn[14] == ("[model](../results/toy/rpn_R-50-FPN_1x/train/model_final.pth)"
                       " / [config](../configs/rpn.yaml)")

    e2e = _table_rows(text, "End-to-End Faster & Mask R-CNN Baselines")
    # R-50 before R-101 (numbers compare as numbers)
    assert [row[:3] for row in e2e] == [["R-50-FPN", "scratch", "Faster"],
                                        ["R-101-FPN", "R-101.pkl", "Mask"]]
    assert e2e[0][5] == "-" and e2e[0][13] == "-"                        # no mem, no run id
    assert e2e[1][5:12] == ["8.6", "0.877", "1.50", "0.123", "37.7", "34.1", "-"]

    # the manifest's notes of a section, as bullets under its table; none elsewhere
    rpn_section = text.split("## RPN Proposal Baselines\n", 1)[1].split("\n## ", 1)[0]
    assert rpn_section.endswith("\n\n**Notes:**\n\n- AR@1000 on the toy set.\n- One RPN.\n")
    assert text.count("**Notes:**") == 1


def test_rerender_is_byte_identical(toy_zoo):
    first = write_model_zoo(toy_zoo).read_bytes()
    assert write_model_zoo(toy_zoo).read_bytes() == first


def test_complete_zoo_has_no_marks_and_no_command_list(toy_zoo, caplog):
    text = write_model_zoo(toy_zoo).read_text()
    assert "Not run yet" not in text and "snakemake --cores" not in text
    assert "*not " not in text and "no MLflow run" not in text
    assert text.count("[model](") == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_rows_not_run_or_not_evaluated_are_rendered_marked_with_their_commands(toy_zoo, caplog):
    for path in (toy_zoo.layout.metrics("e2e_faster_rcnn_R-50-FPN_1x"),
                 toy_zoo.layout.train_stats("e2e_faster_rcnn_R-50-FPN_1x"),
                 toy_zoo.layout.run_file("e2e_faster_rcnn_R-50-FPN_1x"),
                 toy_zoo.layout.metrics("rpn_R-50-FPN_1x")):
        Path(path).unlink()
    Path("configs").mkdir()
    Path("configs/f50.yaml").write_text("MODEL: {FASTER_RCNN: True}\n")   # its type column
    text = write_model_zoo(toy_zoo, manifest_file="configs/zoo/toy.yaml").read_text()

    (rpn,) = _table_rows(text, "RPN Proposal Baselines")       # trained: its train numbers
    assert rpn[:13] == ["R-50-FPN", "R-50-GN", "RPN", "1x", "2", "3.0", "0.400", "1.00", "-",
                        "-", "-", "-", "-"]
    assert rpn[13] == "`" + "b" * 32 + "` *not evaluated*"
    assert rpn[14].startswith("[model](")
    faster, mask = _table_rows(text, "End-to-End Faster & Mask R-CNN Baselines")
    # not trained: type and pretrained weights from its config
    assert faster[:4] == ["R-50-FPN", "scratch", "Faster", "1x"] and set(faster[4:13]) == {"-"}
    assert faster[13:] == ["*not run*", "[config](../configs/f50.yaml)"]   # no weights yet
    assert mask[13] == "`" + "a" * 32 + "`"                                 # complete

    listing = text.split("\n## Not run yet\n", 1)[1]
    assert "2 of 3 baselines are not complete yet" in listing
    command = "snakemake --cores all --profile workflow/profiles/default {} --configfile " \
              "configs/zoo/toy.yaml"
    assert (f"- rpn_R-50-FPN_1x (not evaluated): "
            f"`{command.format('baseline_rpn_R-50-FPN_1x')}`\n") in listing
    assert (f"- e2e_faster_rcnn_R-50-FPN_1x (not run): "
            f"`{command.format('baseline_e2e_faster_rcnn_R-50-FPN_1x')}`\n") in listing
    assert "e2e_mask_rcnn_R-101-FPN_1x" not in listing
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "rpn_R-50-FPN_1x (not evaluated), e2e_faster_rcnn_R-50-FPN_1x (not run)" in warning


@pytest.mark.parametrize("entry, weights, expected", [
    ({"weights_from": "R-18-GN"}, "results/toy/pretrained/R-18-GN.pkl", "R-18-GN"),
    ({}, "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl",
     "R-50.pkl"),
    ({}, "", "scratch"),
])
def test_pretrained_column_names_the_weights_training_starts_from(entry, weights, expected):
    manifest = dict(MANIFEST, pretrained={"R-18-GN": {"config": "p.yaml"}})
    manifest["baselines"] = {"rpn_R-18-FPN_1x": {"config": "rpn.yaml", "section": "rpn",
                                                 **entry}}
    baseline = parse_manifest(manifest).baseline("rpn_R-18-FPN_1x")
    assert pretrained_label(baseline, load_config(None, ["TRAIN.WEIGHTS", weights])) == expected


def test_rows_trained_before_the_pretrained_column_ask_their_config(toy_zoo):
    stats_file = Path(toy_zoo.layout.train_stats("e2e_faster_rcnn_R-50-FPN_1x"))
    stats = json.loads(stats_file.read_text())
    del stats["pretrained"]
    stats_file.write_text(json.dumps(stats))
    Path("configs").mkdir()
    Path("configs/f50.yaml").write_text("MODEL: {FASTER_RCNN: True}\nTRAIN: {WEIGHTS: w/X.pkl}\n")
    (row,) = [r for r in collect_rows(toy_zoo) if r.name == "e2e_faster_rcnn_R-50-FPN_1x"]
    assert (row.model_type, row.pretrained) == ("Faster", "X.pkl")


def test_cli_table_names_a_non_default_manifest_in_its_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("toy.yaml").write_text(yaml.safe_dump(MANIFEST))
    assert cli_main(["zoo", "table", "--manifest", "toy.yaml", "--output", "T.md"]) == 0
    text = Path("T.md").read_text()
    assert text.count("*not run*") == 3                # no config files: type '-'
    assert ("`snakemake --cores all --profile workflow/profiles/default "
            "baseline_rpn_R-50-FPN_1x --configfile toy.yaml`") in text


def test_the_default_manifest_needs_no_configfile():
    assert baseline_command("rpn_R-18-FPN_1x") == (
        "snakemake --cores all --profile workflow/profiles/default baseline_rpn_R-18-FPN_1x")


@pytest.mark.parametrize("what", ["metrics", "train_stats", "run_file"])
def test_corrupt_file_names_it(toy_zoo, what):
    path = getattr(toy_zoo.layout, what)("rpn_R-50-FPN_1x")
    Path(path).write_text("{not json")
    with pytest.raises(DatasetError, match=f"{path} is not valid JSON"):
        collect_rows(toy_zoo)


@pytest.mark.parametrize("overrides, expected", [
    (["MODEL.RPN_ONLY", "True"], "RPN"),
    (["MODEL.FASTER_RCNN", "True"], "Faster"),
    (["MODEL.FASTER_RCNN", "True", "MODEL.MASK_ON", "True"], "Mask"),
    (["MODEL.FASTER_RCNN", "True", "MODEL.KEYPOINTS_ON", "True"], "Kps"),
    (["MODEL.TYPE", "retinanet", "RETINANET.RETINANET_ON", "True", "MODEL.NUM_CLASSES", "7"],
     "RetinaNet"),
    (["MODEL.TYPE", "rfcn", "MODEL.FASTER_RCNN", "True", "MODEL.NUM_CLASSES", "7"], "R-FCN"),
    ([], "Fast"),
])
def test_model_type_column(overrides, expected):
    assert model_type(load_config(None, overrides)) == expected
