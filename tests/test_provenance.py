"""An output directory's results belong to the training config that produced them: another
config neither resumes nor returns them (engine.provenance, `detectron train --overwrite`)."""
import json

import pytest

from detectron_lib.cli import main as cli_main
from detectron_lib.config import load_config
from detectron_lib.engine.provenance import (
    PROVENANCE_FILE,
    WEIGHTS_DIGEST_KEY,
    claim_output_dir,
    training_config,
)
from detectron_lib.errors import ConfigError
from test_training import BASE_CONFIG, tiny_overrides


def tiny_cfg(catalog, output_dir, **extra):
    return load_config(BASE_CONFIG, tiny_overrides(catalog, output_dir, **extra))


def finished_dir(tmp_path, catalog, **extra):
    """An output directory claimed by the tiny config with a stand-in final model."""
    out = tmp_path / "run"
    claim_output_dir(tiny_cfg(catalog, out, **extra), out)
    (out / "model_final.pth").write_bytes(b"weights")
    return out


def test_another_training_config_is_refused_naming_the_keys(tmp_path):
    out = finished_dir(tmp_path, "catalog.yaml")
    changed = tiny_cfg("catalog.yaml", out, **{"SOLVER.BASE_LR": "0.02", "TRAIN.SCALES": "(72,)"})
    with pytest.raises(ConfigError) as info:
        claim_output_dir(changed, out)
    message = str(info.value)
    assert str(out) in message and "2 key(s) differ" in message
    assert "SOLVER.BASE_LR: 0.01 there, 0.02 now" in message
    assert "TRAIN.SCALES: [64] there, [72] now" in message
    assert "--overwrite" in message and "fresh OUTPUT_DIR" in message
    assert (out / "model_final.pth").read_bytes() == b"weights"  # nothing was touched


def test_overwrite_removes_the_other_configs_results_and_records_the_new_one(tmp_path):
    out = finished_dir(tmp_path, "catalog.yaml")
    for name in ("model_iter1.pth", "train_log.jsonl", "metrics.json", "unrelated.txt"):
        (out / name).write_text("x")
    changed = tiny_cfg("catalog.yaml", out, **{"SOLVER.BASE_LR": "0.02"})
    claim_output_dir(changed, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [PROVENANCE_FILE, "unrelated.txt"]
    recorded = json.loads((out / PROVENANCE_FILE).read_text())
    assert recorded["config"]["SOLVER.BASE_LR"] == 0.02
    claim_output_dir(changed, out)  # now its own


def test_keys_that_cannot_change_the_weights_keep_the_results(tmp_path):
    out = finished_dir(tmp_path, "catalog.yaml")
    claim_output_dir(tiny_cfg("catalog.yaml", out, **{
        "TEST.SCORE_THRESH": "0.5", "TEST.DATASETS": "('other',)", "TRAIN.SNAPSHOT_ITERS": "3",
        "TRAIN.AUTO_RESUME": "False", "DATA_LOADER.NUM_THREADS": "2",
        "PRETRAIN.MAX_ITER": "7", "DOWNLOAD_CACHE": str(tmp_path)}), out)
    assert (out / "model_final.pth").is_file()


def test_a_directory_without_a_record_is_judged_by_its_config_yaml(tmp_path):
    out = finished_dir(tmp_path, "catalog.yaml")
    (out / PROVENANCE_FILE).unlink()
    cfg = tiny_cfg("catalog.yaml", out)
    (out / "config.yaml").write_text(cfg.dump())
    claim_output_dir(cfg, out)  # the same config: kept
    (out / PROVENANCE_FILE).unlink()
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER: 6 there, 8 now"):
        claim_output_dir(tiny_cfg("catalog.yaml", out, **{"SOLVER.MAX_ITER": "8"}), out)
    (out / "config.yaml").write_text("MODEL: [torn")
    with pytest.raises(ConfigError, match="no record of the config that produced them"):
        claim_output_dir(cfg, out)


def test_replaced_initial_weights_are_another_training_config(tmp_path):
    weights = tmp_path / "body.pkl"
    weights.write_bytes(b"first")
    out = finished_dir(tmp_path, "catalog.yaml", **{"TRAIN.WEIGHTS": str(weights)})
    cfg = tiny_cfg("catalog.yaml", out, **{"TRAIN.WEIGHTS": str(weights)})
    assert training_config(cfg)[WEIGHTS_DIGEST_KEY] is not None
    claim_output_dir(cfg, out)
    weights.write_bytes(b"second")
    with pytest.raises(ConfigError, match=r"TRAIN.WEIGHTS \(sha256 of the file\)"):
        claim_output_dir(cfg, out)


def test_an_output_dir_that_is_a_file_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    with pytest.raises(ConfigError, match="OUTPUT_DIR '.*run' is a file"):
        claim_output_dir(tiny_cfg("catalog.yaml", out), out)
    with pytest.raises(ConfigError, match="cannot write into OUTPUT_DIR '.*run/sub'"):
        claim_output_dir(tiny_cfg("catalog.yaml", out / "sub"), out / "sub")


@pytest.mark.slow
def test_cli_train_refuses_a_changed_config_and_overwrites_on_request(tiny_dataset, tmp_path,
                                                                      capsys):
    out = tmp_path / "run"
    base = ["train", "--cfg", BASE_CONFIG]
    short = {"SOLVER.MAX_ITER": "2", "TRAIN.SNAPSHOT_ITERS": "1"}
    assert cli_main(base + tiny_overrides(tiny_dataset, out, **short)) == 0
    final = (out / "model_final.pth").read_bytes()

    changed = tiny_overrides(tiny_dataset, out, **short, **{"SOLVER.BASE_LR": "0.005"})
    capsys.readouterr()
    assert cli_main(base + changed) == 2
    error = capsys.readouterr().err
    assert "SOLVER.BASE_LR: 0.01 there, 0.005 now" in error and "--overwrite" in error
    assert (out / "model_final.pth").read_bytes() == final
    assert "BASE_LR: 0.01\n" in (out / "config.yaml").read_text()  # still describes the weights

    # an unfinished run of the old config is not resumed either
    (out / "model_final.pth").unlink()
    assert cli_main(base + changed) == 2
    assert (out / "model_iter0.pth").is_file()

    assert cli_main(base + ["--overwrite"] + changed) == 0
    assert (out / "model_final.pth").read_bytes() != final
    assert "BASE_LR: 0.005" in (out / "config.yaml").read_text()
