"""Loaded files are data, never code: a weights file (.pkl or .pth, a path or a cached URL), a
snapshot that auto-resume picks up and a proposal file each refuse a pickled payload before it
runs, naming the file; Detectron's Python 2 pickles, detectron2's layouts and our own snapshots
still load; a corrupt newest snapshot falls back to the previous readable one."""
import io
import logging
import pickle
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron_lib.config import load_config
from detectron_lib.data.proposals import load_proposals, save_proposals
from detectron_lib.engine.checkpoint import (
    CheckpointError,
    CheckpointRefusedError,
    load_checkpoint,
    load_latest_checkpoint,
    rng_state,
    set_rng_state,
)
from detectron_lib.engine.checkpoint_formats import (
    DETECTRON,
    DETECTRON2,
    load_weights,
    read_weights_file,
)
from detectron_lib.engine.trainer import train
from detectron_lib.errors import DatasetError
from detectron_lib.utils import safe_pickle
from detectron_lib.utils.download import cache_path_for
from test_training import BASE_CONFIG, tiny_overrides



class Payload:
    """Unpickled, it creates the file ``marker`` (``open(marker, 'w')``): code a file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    """A marker path, and proof that the payload is live: plain pickle does create it."""
    path = tmp_path / "payload_ran"
    pickle.loads(pickle.dumps(Payload(path)))
    assert path.exists()
    path.unlink()
    return path


def _refused(excinfo, path):
    message = str(excinfo.value)
    assert f"'{path}' is refused" in message and "open" in message and "not data" in message, message


# ---- payloads: one per load path -------------------------------------------------------------
def test_weights_pkl_with_payload_is_refused(tmp_path, marker):
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros(3, np.float32), "x": Payload(marker)}}, f, protocol=2)
    with pytest.raises(CheckpointRefusedError) as excinfo:
        load_weights(torch.nn.Linear(1, 1), path, for_training=True)
    _refused(excinfo, path)
    assert not marker.exists()


def test_weights_pth_with_payload_is_refused(tmp_path, marker):
    for legacy in (False, True):
        path = tmp_path / f"model{legacy}.pth"
        torch.save({"model": {"conv1.weight": torch.zeros(1)}, "x": Payload(marker)}, path,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointRefusedError) as excinfo:
            read_weights_file(path)
        _refused(excinfo, path)
        assert not marker.exists()


def test_url_weights_cached_with_payload_are_refused_without_network(tmp_path, marker):
    url = "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    cache = tmp_path / "cache"
    cached = cache_path_for(url, cache)
    cached.parent.mkdir(parents=True)
    with open(cached, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": Payload(marker)}}, f)
    with pytest.raises(CheckpointRefusedError) as excinfo:
        load_weights(torch.nn.Linear(1, 1), url, cache_dir=str(cache))
    _refused(excinfo, cached)
    assert not marker.exists()


def test_proposal_file_with_payload_is_refused(tmp_path, marker):
    path = tmp_path / "proposals.pkl"
    with open(path, "wb") as f:
        pickle.dump({"boxes": [np.zeros((1, 4), np.float32)], "scores": [np.ones(1, np.float32)],
                     "ids": [Payload(marker)]}, f)
    with pytest.raises(DatasetError) as excinfo:
        load_proposals(path)
    _refused(excinfo, path)
    assert not marker.exists()


def test_saved_proposals_are_read_back_by_the_restricted_unpickler(tmp_path):
    path = tmp_path / "props.pkl"
    boxes = [np.arange(8, dtype=np.float64).reshape(2, 4), np.zeros((0, 4))]
    save_proposals(path, boxes, [np.array([0.5, 0.25]), np.zeros(0)], [np.int64(3), 9])
    with open(path, "rb") as f:
        raw = safe_pickle.load(f)
    assert raw["ids"] == [3, 9] and all(b.dtype == np.float32 for b in raw["boxes"])
    loaded = load_proposals(path)
    np.testing.assert_array_equal(loaded[3][0], boxes[0])
    assert loaded[9][0].shape == (0, 4)


# ---- what still loads ------------------------------------------------------------------------
def _py2_pickle(obj):
    """``obj`` (dicts of str keys -> dicts / numpy arrays) as Python 2's cPickle protocol 2
    wrote it with numpy 1.x: byte strings for keys and array data, numpy.core.multiarray."""
    out = [b"\x80\x02"]

    def string(value):  # a Python 2 str: SHORT_BINSTRING / BINSTRING
        data = value if isinstance(value, bytes) else value.encode("latin1")
        return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))) + data

    def emit(value):
        if isinstance(value, dict):
            out.append(b"}(")
            for key, item in value.items():
                out.append(string(key))
                emit(item)
            out.append(b"u")
        else:
            dtype = value.dtype.str
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string("b")
                       + b"\x87R(K\x01(" + b"".join(b"J" + struct.pack("<i", n) for n in value.shape)
                       + b"tcnumpy\ndtype\n" + string(dtype[1:]) + b"K\x00K\x01\x87R(K\x03"
                       + string(dtype[0]) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
                       + string(value.tobytes()) + b"tb")

    emit(obj)
    return b"".join(out) + b"."


def test_python2_detectron_pickle_loads(tmp_path):
    blobs = {"conv1_w": np.random.RandomState(0).randn(4, 3, 7, 7).astype(np.float32),
             "res_conv1_bn_s": np.arange(4, dtype=np.float32), "iter": np.array(7, np.int64),
             "lr": np.array([0.5], ">f8")}
    data = _py2_pickle({"blobs": blobs})
    reference = pickle.loads(data, encoding="latin1")["blobs"]  # what Python's own pickle reads
    path = tmp_path / "R-50.pkl"
    path.write_bytes(data)
    weights = read_weights_file(path)
    assert weights.format == DETECTRON
    for name in ("conv1_w", "res_conv1_bn_s"):
        np.testing.assert_array_equal(weights.tensors[name].numpy(), blobs[name])
        np.testing.assert_array_equal(weights.tensors[name].numpy(), reference[name])
    with open(path, "rb") as f:
        raw = safe_pickle.load(f)["blobs"]
    # numpy turns a Python 2 pickle's big-endian data native, as Python's own pickle shows
    assert raw["lr"].dtype == reference["lr"].dtype and raw["lr"][0] == 0.5 and raw["iter"] == 7


def test_detectron2_pkl_and_checkpointer_pth_load(tmp_path):
    model = {"backbone.bottom_up.res2.0.conv1.weight": np.ones((2, 2, 1, 1), np.float32),
             "proposal_generator.rpn_head.conv.weight": np.zeros((2, 2, 3, 3), np.float32)}
    path = tmp_path / "model_final_f10217.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo",
                     "matching_heuristics": True}, f)
    weights = read_weights_file(path)
    assert weights.format == DETECTRON2 and sorted(weights.tensors) == sorted(model)

    # detectron2's Checkpointer: model, optimizer, scheduler and iteration
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = torch.ones(2)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 5])
    pth = tmp_path / "model_0004999.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in model.items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "iteration": 4999}, pth)
    weights = read_weights_file(pth)
    assert weights.format == DETECTRON2 and sorted(weights.tensors) == sorted(model)


def test_pretrain_body_pkl_with_its_summary_loads(tmp_path):
    path = tmp_path / "R-18-pretrained.pkl"
    summary = {"conv_body": "ResNet.add_ResNet18_conv5_body", "iterations": 10, "train_time_s": 1.5,
               "train_datasets": ["shapes_train"], "categories": ["__background__", "circle"],
               "val_accuracy": 0.5}
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones((2, 3, 7, 7), np.float32)}, "pretrain": summary}, f,
                    protocol=4)
    assert read_weights_file(path).format == DETECTRON


def test_object_arrays_and_dtypes_claiming_objects_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.array([1, "x"], dtype=object)}}, f, protocol=2)
    with pytest.raises(CheckpointRefusedError, match=r"objects.pkl' is refused.*dtype object"):
        read_weights_file(path)
    # a plain void dtype whose pickled flags claim Python objects: numpy would read the array's
    # bytes as object pointers
    data = pickle.dumps(np.zeros(2, dtype="V8"), protocol=2)
    state = b"K\x08K\x01K\x00t"  # elsize 8, alignment 1, flags 0
    assert data.count(state) == 1
    with pytest.raises(safe_pickle.RefusedObject, match="claiming Python objects"):
        safe_pickle.load(io.BytesIO(data.replace(state, b"K\x08K\x01K?t")))  # flags 63
    assert safe_pickle.load(io.BytesIO(data)).dtype == np.dtype("V8")


def test_rng_state_survives_a_weights_only_round_trip():
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = (torch.rand(3), np.random.randn(5), np.random.randint(0, 1000, 5), random.random(),
                random.gauss(0, 1))
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    again = (torch.rand(3), np.random.randn(5), np.random.randint(0, 1000, 5), random.random(),
             random.gauss(0, 1))
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    np.testing.assert_array_equal(expected[2], again[2])
    assert expected[3:] == again[3:]


# ---- snapshots in OUTPUT_DIR -----------------------------------------------------------------
def _overrides(catalog, output_dir):
    return tiny_overrides(catalog, output_dir, **{
        "SOLVER.MAX_ITER": "3", "SOLVER.STEPS": "[0]", "SOLVER.WARM_UP_ITERS": "1",
        "TRAIN.SNAPSHOT_ITERS": "1", "DEVICE": "cpu"})


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """A finished 3-iteration run: model_iter0.pth, model_iter1.pth, model_final.pth."""
    out = tmp_path_factory.mktemp("safe_run") / "run"
    train(load_config(BASE_CONFIG, _overrides(tiny_dataset, out)))
    assert {"model_iter0.pth", "model_iter1.pth", "model_final.pth"} <= {p.name for p in out.iterdir()}
    return out


def _copy_run(run, tmp_path, tiny_dataset):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out, load_config(BASE_CONFIG, _overrides(tiny_dataset, out))


def test_own_snapshots_load_with_plain_weights_only(trained_run):
    for name in ("model_iter0.pth", "model_final.pth"):
        state = torch.load(trained_run / name, weights_only=True)
        assert {"model", "optimizer", "iteration", "rng"} <= set(state)


def test_snapshot_with_payload_planted_in_output_dir_is_refused_by_resume(
        trained_run, tmp_path, tiny_dataset, marker):
    out, cfg = _copy_run(trained_run, tmp_path, tiny_dataset)
    (out / "model_final.pth").unlink()
    state = load_checkpoint(out / "model_iter1.pth")
    state["rng"] = Payload(marker)
    torch.save(state, out / "model_iter1.pth")
    with pytest.raises(CheckpointRefusedError) as excinfo:
        train(cfg)
    _refused(excinfo, out / "model_iter1.pth")
    assert not marker.exists()


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(trained_run, tmp_path, tiny_dataset,
                                                                caplog):
    out, cfg = _copy_run(trained_run, tmp_path, tiny_dataset)
    (out / "model_final.pth").unlink()
    newest = out / "model_iter1.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING, logger="detectron_lib.engine.checkpoint"):
        train(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w and str(out / "model_iter0.pth") in w for w in warnings), warnings
    # resumed from iteration 0 with its RNG state: the same weights as the uninterrupted run
    resumed = torch.load(out / "model_final.pth", weights_only=True)["model"]
    reference = torch.load(trained_run / "model_final.pth", weights_only=True)["model"]
    assert resumed.keys() == reference.keys()
    assert max((resumed[k].float() - reference[k].float()).abs().max().item() for k in resumed) <= 1e-6


def test_corrupt_final_falls_back_and_nothing_readable_is_an_error(trained_run, tmp_path, tiny_dataset,
                                                                   caplog):
    out, cfg = _copy_run(trained_run, tmp_path, tiny_dataset)
    final = out / "model_final.pth"
    final.write_bytes(b"PK\x03\x04 not a zip")
    with caplog.at_level(logging.WARNING, logger="detectron_lib.engine.checkpoint"):
        path, state = load_latest_checkpoint(out)
    assert path == out / "model_iter1.pth" and state["iteration"] == 1
    assert any(str(final) in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    # training does not take the torn final model as finished: it redoes the last iteration
    train(cfg)
    assert torch.load(final, weights_only=True)["iteration"] == 2

    final.write_bytes(b"PK\x03\x04 not a zip")

    for snapshot in out.glob("model_iter*.pth"):
        snapshot.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be read") as excinfo:
        load_latest_checkpoint(out)
    assert str(final) in str(excinfo.value) and str(out / "model_iter0.pth") in str(excinfo.value)
