"""Training engine end to end on a tiny shapes dataset: CLI train/test/infer/proposals,
resume after SIGKILL equals an uninterrupted run, 2-process gloo equals 1 process on the same
global batch, and a diverging loss stops with the iteration named."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from detectron_lib.cli import main as cli_main
from detectron_lib.config import load_config
from detectron_lib.engine import trainer
from detectron_lib.engine.train_log import TrainLogError, read_train_log
from detectron_lib.engine.trainer import TrainingError, train
from detectron_lib.errors import ConfigError
from detectron_lib.inference.engine import dump_proposals, evaluate_from_proposal_dumps

pytestmark = pytest.mark.slow

from pathlib import Path

BASE_CONFIG = str(Path(__file__).resolve().parents[1] / "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml")


def tiny_overrides(catalog, output_dir, **extra):
    """A small, fast version of the shapes R-18-FPN baseline."""
    opts = {
        "DATASET_CATALOG_FILE": str(catalog), "OUTPUT_DIR": str(output_dir),
        "TRAIN.DATASETS": "('tiny_shapes',)", "TEST.DATASETS": "('tiny_shapes',)",
        "TRAIN.SCALES": "(64,)", "TRAIN.MAX_SIZE": "96", "TEST.SCALE": "64", "TEST.MAX_SIZE": "96",
        "FPN.DIM": "32", "FAST_RCNN.MLP_HEAD_DIM": "32", "TRAIN.BATCH_SIZE_PER_IM": "16",
        "TRAIN.RPN_BATCH_SIZE_PER_IM": "32", "TRAIN.RPN_PRE_NMS_TOP_N": "300",
        "TRAIN.RPN_POST_NMS_TOP_N": "100", "TEST.RPN_PRE_NMS_TOP_N": "200",
        "TEST.RPN_POST_NMS_TOP_N": "50", "SOLVER.MAX_ITER": "6", "SOLVER.STEPS": "[0, 4]",
        "SOLVER.WARM_UP_ITERS": "2", "SOLVER.BASE_LR": "0.01", "TRAIN.SNAPSHOT_ITERS": "2",
        "TRAIN.IMS_PER_BATCH": "2", "TRAIN.ASPECT_GROUPING": "False",
        "DATA_LOADER.NUM_THREADS": "0", "TRAIN.AUTO_RESUME": "True",
        # from scratch in float32: exact comparisons across runs and process counts
        "TRAIN.WEIGHTS": "", "TRAIN.FREEZE_AT": "0", "MODEL.BODY_PRECISION": "float32",
        "MODEL.HEAD_PRECISION": "float32",
    }
    opts.update(extra)
    return [token for pair in opts.items() for token in pair]


def detectron(*args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "detectron_lib.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_weights(output_dir):
    return torch.load(output_dir / "model_final.pth", weights_only=False)["model"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst}"


def test_cli_train_test_proposals_infer(tiny_dataset, tmp_path, reference_dir, capsys, caplog):
    caplog.set_level(logging.INFO, logger="detectron_lib")
    out = tmp_path / "run"
    assert cli_main(["train", "--cfg", BASE_CONFIG, *tiny_overrides(tiny_dataset, out)]) == 0
    for name in ("model_final.pth", "train_log.jsonl", "config.yaml", "model_iter1.pth", "model_iter3.pth"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["iter"] == 0 and records[-1]["iter"] == 5
    assert {"loss", "lr", "time", "data_time", "loss_rpn_cls", "loss_cls"} <= set(records[-1])
    # The console (and a job's log) shows progress: iterations done of all, ETA, every loss.
    lines = [r.getMessage() for r in caplog.records if r.name == "detectron_lib.engine.trainer"]
    number = r"\d+\.\d+"
    for done, line in zip((1, 6), (lines[0], lines[-1])):   # the ETA needs 3 timed steps
        assert re.fullmatch(rf"eta: (\?|\d+:\d\d:\d\d)  iter: {done}/6  total_loss: {number}  "
                            rf"(loss_\w+: {number}  )+lr: {number}  time: {number}  "
                            rf"data_time: {number}  max_mem: {number}G", line), line
    assert lines[-1].startswith("eta: 0:00:00  ")

    weights = str(out / "model_final.pth")
    assert cli_main(["test", "--cfg", BASE_CONFIG, "--weights", weights, *tiny_overrides(tiny_dataset, out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox/AP"] <= 1.0 and metrics["inference_time_s_per_im"] > 0
    assert not any(key.startswith("train") for key in metrics)  # evaluation only
    evaluated = [r.getMessage() for r in caplog.records if r.name == "detectron_lib.inference.engine"]
    assert any(line.startswith("eta: 0:00:00  image: 12/12  time: ") for line in evaluated)

    images = reference_dir / "demo_images"
    assert cli_main(["infer", "--cfg", BASE_CONFIG, "--weights", weights, "--input", str(images),
                     "--output", str(tmp_path / "vis"), *tiny_overrides(tiny_dataset, out)]) == 0
    expected = sorted(p.stem for p in images.glob("*.jpg"))
    assert sorted(p.stem for p in (tmp_path / "vis").glob("*.png")) == expected

    rpn_out = tmp_path / "rpn"
    rpn_opts = tiny_overrides(tiny_dataset, rpn_out, **{"MODEL.RPN_ONLY": "True", "MODEL.FASTER_RCNN": "False"})
    assert cli_main(["train", "--cfg", BASE_CONFIG, *rpn_opts]) == 0
    capsys.readouterr()
    assert cli_main(["proposals", "--cfg", BASE_CONFIG, "--weights", str(rpn_out / "model_final.pth"),
                     "--dataset", "tiny_shapes", "--output", str(tmp_path / "props.pkl"), *rpn_opts]) == 0
    recall = json.loads(capsys.readouterr().out)
    assert 0.0 <= recall["proposals/AR@100"] <= recall["proposals/AR@1000"] <= 1.0
    assert recall["proposals/images"] == 12 and recall["proposals/per_image"] > 0
    assert (tmp_path / "props.pkl").is_file()

    # Without recall (the DAG's training-set dumps) the same file and only the counts.
    counts = dump_proposals(load_config(BASE_CONFIG, rpn_opts), str(rpn_out / "model_final.pth"),
                            "tiny_shapes", tmp_path / "props_no_recall.pkl", recall=False)
    assert counts.keys() == {"proposals/images", "proposals/per_image", "inference_time_s_per_im"}
    assert {k: counts[k] for k in ("proposals/images", "proposals/per_image")} == \
        {k: recall[k] for k in ("proposals/images", "proposals/per_image")}
    assert (tmp_path / "props_no_recall.pkl").read_bytes() == (tmp_path / "props.pkl").read_bytes()

    # The DAG evaluates an RPN from its test-set dump: the same recall as `detectron test`.
    rpn_cfg = load_config(BASE_CONFIG, rpn_opts)
    assert cli_main(["test", "--cfg", BASE_CONFIG, "--weights", str(rpn_out / "model_final.pth"),
                     *rpn_opts]) == 0
    tested = json.loads((rpn_out / "metrics.json").read_text())
    (tmp_path / "dump.json").write_text(json.dumps(recall))
    evaluate_from_proposal_dumps(rpn_cfg, [tmp_path / "dump.json"], tmp_path / "eval")
    from_dump = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert from_dump["inference_time_s_per_im"] == recall["inference_time_s_per_im"]
    ar_keys = [k for k in tested if k.startswith("proposals/AR")]
    assert ar_keys and {k: from_dump[k] for k in ar_keys} == {k: tested[k] for k in ar_keys}
    (tmp_path / "counts.json").write_text(json.dumps(counts))
    with pytest.raises(ConfigError, match="counts.json: no recall"):
        evaluate_from_proposal_dumps(rpn_cfg, [tmp_path / "counts.json"], tmp_path / "eval")


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_dataset, tmp_path):
    overrides = dict(**{"SOLVER.MAX_ITER": "10", "SOLVER.STEPS": "[0, 7]"})
    straight = tmp_path / "straight"
    proc = detectron("train", "--cfg", BASE_CONFIG, *tiny_overrides(tiny_dataset, straight, **overrides))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    killed = tmp_path / "killed"
    args = ("train", "--cfg", BASE_CONFIG, *tiny_overrides(tiny_dataset, killed, **overrides))
    proc = detectron(*args)
    deadline = time.time() + 300
    # Kill once the second snapshot exists: mid-run, between snapshots 3 and 5.
    while not (killed / "model_iter3.pth").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists()
    proc = detectron(*args)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert_same_weights(final_weights(straight), final_weights(killed), atol=1e-6)
    logged = [json.loads(line)["iter"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 9

    # A finished run is not retrained.
    mtime = (killed / "model_final.pth").stat().st_mtime
    proc = detectron(*args)
    assert proc.wait(timeout=300) == 0
    assert (killed / "model_final.pth").stat().st_mtime == mtime


def test_resume_drops_a_torn_last_log_line_cleans_orphans_and_names_a_corrupt_line(
        tiny_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="detectron_lib.utils.io")
    out = tmp_path / "run"
    cfg = load_config(BASE_CONFIG, tiny_overrides(tiny_dataset, out, **{
        "SOLVER.MAX_ITER": "4", "SOLVER.STEPS": "[0, 3]"}))
    train(cfg, log_period=1)
    log = out / "train_log.jsonl"
    lines = log.read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [0, 1, 2, 3]
    # Killed after snapshot model_iter1.pth, while writing iteration 3's log line and a save.
    (out / "model_final.pth").unlink()
    log.write_text("\n".join(lines[:3]) + "\n" + lines[3][:len(lines[3]) // 2])
    orphan = out / ".model_final.pth.0123456789ab.tmp"
    orphan.write_bytes(b"half a checkpoint")
    (out / ".keep").write_text("not ours")

    train(cfg, log_period=1)  # resumes at iteration 2
    assert not orphan.exists() and (out / ".keep").read_text() == "not ours"
    assert any(orphan.name in r.getMessage() for r in caplog.records if r.levelname == "INFO")
    assert any(str(log) in r.getMessage() and "last line 4" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    rewritten = log.read_text().splitlines()
    assert rewritten[:2] == lines[:2]
    assert [json.loads(line)["iter"] for line in rewritten] == [0, 1, 2, 3]

    # Damage that is not a torn last line is an error naming the file and line.
    (out / "model_final.pth").unlink()
    log.write_text("\n".join([rewritten[0], "{garbage", *rewritten[1:]]) + "\n")
    damaged = log.read_text()
    with pytest.raises(TrainLogError, match=rf"{re.escape(str(log))}, line 2: "):
        train(cfg, log_period=1)
    assert log.read_text() == damaged


def test_the_train_log_reader_drops_a_torn_last_line_only(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"iter": 0, "time": 1.0}\n{"iter": 1, "time": 3.0}\n'
                   '{"iter": 1, "time": 2.0}\n{"iter": 2, "ti')
    assert [r["time"] for r in read_train_log(log)] == [1.0, 2.0]  # a redone iteration: latest
    log.write_text('{"iter": 0, "time": 1.0}\n[1, 2]\n{"iter": 2, "time": 1.0}\n')
    with pytest.raises(TrainLogError, match=rf"{re.escape(str(log))}, line 2: "):
        read_train_log(log)


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tiny_dataset, tmp_path):
    # MAX_SIZE 64 pads every image to 64x64, so a 4-image batch and two 2-image batches see
    # the same padded inputs (GroupNorm statistics include the padding).
    same_size = {"TRAIN.MAX_SIZE": "64", "SOLVER.MAX_ITER": "3"}
    one = tmp_path / "one"
    proc = detectron("train", "--cfg", BASE_CONFIG,
                     *tiny_overrides(tiny_dataset, one, **{"TRAIN.IMS_PER_BATCH": "4", **same_size}))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "detectron_lib.cli", "train", "--cfg", BASE_CONFIG,
           *tiny_overrides(tiny_dataset, two, **{"TRAIN.IMS_PER_BATCH": "2", **same_size})]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(final_weights(one), final_weights(two), atol=1e-5)


def test_diverging_loss_stops_naming_the_iteration(tiny_dataset, tmp_path, monkeypatch):
    real_build = trainer.build_model

    def build_with_nan_at_iter_2(cfg):
        model = real_build(cfg)
        forward = model.forward
        calls = {"n": 0}

        def poisoned(*args, **kwargs):
            losses = forward(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 3:
                losses["loss_cls"] = losses["loss_cls"] * float("nan")
            return losses

        model.forward = poisoned
        return model

    monkeypatch.setattr(trainer, "build_model", build_with_nan_at_iter_2)
    cfg = load_config(BASE_CONFIG, tiny_overrides(tiny_dataset, tmp_path / "nan"))
    with pytest.raises(TrainingError, match="at iteration 2"):
        train(cfg)


def test_two_process_inference_merges_to_the_single_process_result(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert cli_main(["train", "--cfg", BASE_CONFIG, *tiny_overrides(tiny_dataset, out, **{"SOLVER.MAX_ITER": "2"})]) == 0
    weights = str(out / "model_final.pth")
    single, double = tmp_path / "single", tmp_path / "double"
    assert cli_main(["test", "--cfg", BASE_CONFIG, "--weights", weights, *tiny_overrides(tiny_dataset, single)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "detectron_lib.cli", "test", "--cfg", BASE_CONFIG, "--weights", weights,
           *tiny_overrides(tiny_dataset, double)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    detections = [json.loads((d / "tiny_shapes_bbox_results.json").read_text()) for d in (single, double)]
    key = lambda det: (det["image_id"], -det["score"], det["category_id"])
    assert len(detections[0]) == len(detections[1]) > 0
    for a, b in zip(sorted(detections[0], key=key), sorted(detections[1], key=key)):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-5)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (single, double)]
    assert metrics[0]["bbox/AP"] == pytest.approx(metrics[1]["bbox/AP"], abs=1e-6)
