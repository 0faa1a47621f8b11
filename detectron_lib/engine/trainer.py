"""The training loop, readable top to bottom: iterate, forward, backward, step, then explicit
calls for logging and checkpointing.

A run writes into OUTPUT_DIR: ``model_iter{N}.pth`` every TRAIN.SNAPSHOT_ITERS,
``model_final.pth`` at the end, ``train_log.jsonl`` (one JSON object per logged iteration),
``config.yaml`` and ``provenance.json`` (the training config its results belong to, see
engine.provenance). With TRAIN.AUTO_RESUME a restarted run continues from its latest
snapshot (model, optimizer, iteration, RNG and data position), and a finished run is not
retrained.
"""
import json
import logging
import time
from pathlib import Path

import torch

from detectron_lib.data.loader import build_train_loader
from detectron_lib.engine.checkpoint import (
    FINAL_NAME,
    CheckpointError,
    load_latest_checkpoint,
    save_checkpoint,
    set_rng_state,
    snapshot_name,
)
from detectron_lib.engine.checkpoint_formats import load_weights
from detectron_lib.engine.distributed import all_reduce_mean, barrier, init_distributed, resolve_device
from detectron_lib.engine.optim import build_optimizer, lr_schedule_from_cfg, set_lr
from detectron_lib.engine.provenance import claim_output_dir
from detectron_lib.engine.train_log import TRAIN_LOG, read_train_log_lines
from detectron_lib.errors import DetectronError
from detectron_lib.modeling.backbone.precision import body_autocast_dtype
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.utils.io import atomic_write, remove_orphan_temporaries
from detectron_lib.utils.progress import Progress

logger = logging.getLogger(__name__)


class TrainingError(DetectronError):
    """Training cannot go on (e.g. the loss diverged)."""


def train(cfg, output_dir=None, log_period=20, overwrite=False, on_records=None):
    """Train the model the (finalized) config describes; returns the path of model_final.pth.

    Results that OUTPUT_DIR holds of another training config are an error, or with
    ``overwrite`` deleted first (engine.provenance); those of this config are resumed or, when
    finished, returned. Every ``log_period`` iterations the losses, lr and times go to the
    console and the training log, and (rank 0) to ``on_records(records)``, e.g. a live
    tracker; a resumed run first hands it the records it keeps from before.
    """
    output_dir = Path(output_dir or cfg.OUTPUT_DIR)
    device = resolve_device(cfg.DEVICE)
    dist_info = init_distributed(device.type)
    if dist_info.is_main:
        remove_orphan_temporaries(output_dir)  # of atomic saves that a killed run left behind
        claim_output_dir(cfg, output_dir, overwrite)
    barrier()
    final_path = output_dir / FINAL_NAME
    # the newest readable checkpoint (an unreadable one is passed over with a warning)
    checkpoint, state = (load_latest_checkpoint(output_dir) if cfg.TRAIN.AUTO_RESUME
                         else (None, None))
    if checkpoint == final_path:
        logger.info("%s exists: training already finished", final_path)
        return final_path

    torch.manual_seed(cfg.RNG_SEED)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    lr_at = lr_schedule_from_cfg(cfg)
    start_iter = _resume(checkpoint, state, model, optimizer) if checkpoint else 0
    if start_iter == 0 and cfg.TRAIN.WEIGHTS:  # pretrained initialization (any format, or a URL)
        load_weights(model, cfg.TRAIN.WEIGHTS, for_training=True, cache_dir=cfg.DOWNLOAD_CACHE)
    if dist_info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None)
    if dist_info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(output_dir / "config.yaml") as f:
            f.write(cfg.dump())

    loader = build_train_loader(cfg, start_iter=start_iter, rank=dist_info.rank,
                                world_size=dist_info.world_size)
    log_file = None
    if dist_info.is_main:
        log_file, kept_records = _open_train_log(output_dir / TRAIN_LOG, start_iter)
        if on_records and kept_records:
            on_records(kept_records)
    # The model runs its body and heads in MODEL.BODY_PRECISION / HEAD_PRECISION itself;
    # float16 gradients need scaling.
    float16 = torch.float16 in {body_autocast_dtype(cfg.MODEL.BODY_PRECISION, device.type),
                                body_autocast_dtype(cfg.MODEL.HEAD_PRECISION, device.type)}
    scaler = torch.amp.GradScaler(device.type, enabled=float16)
    model.train()
    progress = Progress(cfg.SOLVER.MAX_ITER, start_iter, device_type=device.type)
    data_start = time.perf_counter()
    try:
        for it, batch in zip(range(start_iter, cfg.SOLVER.MAX_ITER), loader):
            data_time = time.perf_counter() - data_start
            step_start = time.perf_counter()
            lr = lr_at(it)
            set_lr(optimizer, lr)
            losses = model(**batch.model_inputs(device))
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise TrainingError(
                    f"loss became {total.item()} at iteration {it} "
                    f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); "
                    "lower SOLVER.BASE_LR or lengthen SOLVER.WARM_UP_ITERS")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            step_time = time.perf_counter() - step_start
            progress.step()

            if (it + 1) % log_period == 0 or it == start_iter or it + 1 == cfg.SOLVER.MAX_ITER:
                record = all_reduce_mean({k: v.item() for k, v in losses.items()})
                record.update(iter=it, loss=sum(record.values()), lr=lr, time=step_time,
                              data_time=data_time)
                if log_file:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    logger.info("%s", progress.line(
                        "iter", total_loss=record["loss"], **{k: record[k] for k in losses},
                        lr=lr, time=step_time, data_time=data_time))
                    if on_records:
                        on_records([record])
            if (it + 1) % cfg.TRAIN.SNAPSHOT_ITERS == 0 and it + 1 < cfg.SOLVER.MAX_ITER:
                if dist_info.is_main:
                    save_checkpoint(output_dir / snapshot_name(it), model, optimizer, it)
                barrier()
            data_start = time.perf_counter()
    finally:
        if log_file:
            log_file.close()
    if dist_info.is_main:
        save_checkpoint(final_path, model, optimizer, cfg.SOLVER.MAX_ITER - 1)
    barrier()
    return final_path


def _open_train_log(path, start_iter):
    """The training log opened for appending, without records of iterations >= start_iter
    (those a killed run logged after its last snapshot are redone), and the records kept."""
    kept = []
    if start_iter > 0:  # a torn last line is dropped (read_train_log_lines), so never kept
        kept = [record for record in read_train_log_lines(path) if record["iter"] < start_iter]
    with atomic_write(path) as f:
        f.writelines(json.dumps(record) + "\n" for record in kept)
    return open(path, "a"), kept


def _resume(path, state, model, optimizer):
    """Restore the snapshot ``state`` read from ``path`` (load_latest_checkpoint); returns the
    iteration to start at."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"cannot resume from {path}: its model or optimizer state does not fit this model "
            f"({err}). It was written for another config or by an older version of "
            f"detectron_lib; move the snapshots out of {path.parent} or set TRAIN.AUTO_RESUME "
            "False to train from the start") from None
    set_rng_state(state["rng"])
    logger.info("resuming from %s (iteration %d)", path, state["iteration"])
    return state["iteration"] + 1
