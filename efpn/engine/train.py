"""Training: :func:`train` runs a :class:`~efpn.config.TrainConfig` with one visible loop (STYLE §10).

The loop, in :func:`train`, reads top to bottom::

    for epoch:                                  # DistributedSampler.set_epoch -> same shuffle on every rank
        for step:                               # one optimizer step = `accumulate` micro-batches per rank
            for micro-batch:
                autocast -> (losses, stats) = model(images, targets)
                finite check (agreed across ranks)      # a non-finite loss skips the step, never crashes
                scaled backward (DDP syncs gradients on the last micro-batch only)
            unscale, clip, optimizer step -> EMA update -> scheduler step (linear warm-up + cosine)
        validate the EMA weights, save best/last checkpoints and the resumable state (rank 0), log telemetry

Data parallelism (``torchrun``; NCCL on CUDA, gloo on CPU) and mixed precision (bf16, or fp16 with a
GradScaler) are written inline. ``batch_size`` is the GLOBAL batch: each optimizer step consumes exactly
``batch_size`` images split over ``world_size x accumulate`` micro-batches, so 2 GPUs x batch 8 and 1 GPU with
``accumulate=2`` take the same steps on the same images (and, since BatchNorm normalises per micro-batch, the
same gradients: the DDP test checks this).

Reproducibility: every sample's augmentation is seeded by ``(seed, epoch, index)`` (not by worker or rank),
the shuffle by ``(seed, epoch)``, so a run gives the same batches whatever ``workers`` is, and a resumed run
continues exactly where the interrupted one stopped (mid-epoch too): the resume test checks bit-equality.

Run directory (``out/name``)::

    config.yaml         the TrainConfig of the run
    data_split.json     data YAML, splits, and the image ids of train and val (val carved here or by the YAML)
    metrics.csv         one row per logged step (kind=step) and per epoch (kind=epoch, with val AP)
    telemetry.jsonl     one JSON object per epoch: loss parts, positives per level, starved-GT rate, fallback
                        share, FBSM gate mass in boxes, DCLoss G/N/w, grad norm reaching p5/p6, lr, img/s, val
    tb/                 TensorBoard events
    last.safetensors    latest weights (EMA when ema=True) + last.json model card
    best.safetensors    weights with the best val AP + best.json model card
    last_state.pt       everything to resume (model, EMA, optimizer, scaler, scheduler, step, RNG), weights_only
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from efpn.checkpoint import check_state_dict, save_checkpoint
from efpn.config import ModelConfig, TrainConfig
from efpn.data.dataset import DetectionDataset, collate
from efpn.data.images import CorruptImageError
from efpn.engine import distributed as D
from efpn.engine.cards import hardware_info, training_card
from efpn.engine.data import StepBatchSampler, keep_recorded_split, load_train_data, to_device, train_samples
from efpn.engine.ema import ModelEMA
from efpn.engine.optim import WarmupCosine, apply_config, build_optimizer
from efpn.engine.state import (
    STATE_FILE,
    check_resume_classes,
    check_resume_config,
    check_resume_model,
    hold_run,
    load_training_state,
    release_claim,
    release_run,
    restore_training_state,
    run_dir_and_state,
    save_training_state,
)
from efpn.engine.telemetry import EpochTelemetry, RunLogger
from efpn.evaluation.coco import EvalResult
from efpn.evaluation.validate import check_network_sizes, validate
from efpn.explain.gradient import high_level_grad_norms
from efpn.files import atomic_write
from efpn.models.criterion import CriterionStats
from efpn.models.detector import Detector
from efpn.runtime import usable_cpus
from efpn.zoo import PRESETS, build, get_config

__all__ = ["LossStep", "TrainResult", "train"]


@dataclass
class TrainResult:
    """What a run produced (the same on every rank).

    ``last``/``best``: ``.safetensors`` checkpoints with model cards (``best`` is None until a whole epoch was
    validated); ``state``: the resumable ``last_state.pt``; ``metrics``: the last validation
    (:meth:`EvalResult.to_json_dict`, ``{}`` without one); ``telemetry``: the last epoch's summary;
    ``steps`` counts optimizer steps including the ``skipped_steps`` whose loss was not finite.
    """

    run_dir: Path
    last: Path | None = None
    best: Path | None = None
    state: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    best_ap: float | None = None
    epochs: int = 0
    steps: int = 0
    skipped_steps: int = 0
    wall_time_s: float = 0.0
    telemetry: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        ap = self.metrics.get("AP")
        ap50 = self.metrics.get("AP50")
        val = f"AP {ap:.4f} AP50 {ap50:.4f}" if isinstance(ap, float) and isinstance(ap50, float) else "no validation"
        return (f"run {self.run_dir}: {self.epochs} epochs, {self.steps} steps ({self.skipped_steps} skipped), "
                f"{val}, {self.wall_time_s:.0f} s; best {self.best}, last {self.last}")


class LossStep(nn.Module):
    """What DDP wraps: ``forward(images, targets) -> (losses, CriterionStats)`` = ``Detector.compute_losses``.

    DDP only synchronises gradients of work done inside its ``forward``; the detector's own ``forward`` returns
    the losses without the statistics that the telemetry needs, so the wrapper exposes both in one pass.
    """

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor, targets: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Tensor], CriterionStats]:
        return self.detector.compute_losses(images, targets)


# ==================================================================================================== train


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; returns a :class:`TrainResult` (see the module docstring).

    Works under plain ``python`` (one process) and under ``torchrun`` (one process per device; rank 0 logs,
    validates and saves while the others wait at barriers). Raises ValueError / FileNotFoundError for a bad
    configuration before any work, and RuntimeError after ``nonfinite_limit`` consecutive non-finite losses.
    """
    if cfg.model not in PRESETS:
        raise ValueError(f"TrainConfig: unknown model preset {cfg.model!r}; choose one of: {', '.join(PRESETS)}")
    cfg.check_paths()
    started = time.perf_counter()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = D.setup_distributed(cfg.device)
    device, world, main = info.device, info.world_size, info.is_main
    verbose = main and cfg.progress
    logger: RunLogger | None = None
    run_dir: Path | None = None
    lock: IO[str] | None = None
    try:
        # ------------------------------------------------------------------ checks that need the world size
        if cfg.batch_size % (world * cfg.accumulate):
            raise ValueError(f"batch_size {cfg.batch_size} (global) must be divisible by world_size x accumulate "
                             f"= {world} x {cfg.accumulate}")
        if cfg.amp == "fp16" and device.type != "cuda":
            raise ValueError("amp='fp16' needs CUDA (its GradScaler guards fp16 overflow on GPU); "
                             "use amp='bf16' on CPU")
        if cfg.sync_bn and world > 1 and device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        D.seed_everything(cfg.seed, cfg.deterministic)  # same seed on every rank: identical initial weights

        # ------------------------------------------------------------------ data, run dir
        data = load_train_data(cfg, verbose)
        run_dir, state_path = D.broadcast_object(run_dir_and_state(cfg) if main else None)
        lock = hold_run(run_dir) if main else None  # before anything in it is read for a resume or rewritten
        state: dict[str, Any] | None = None
        if state_path is not None:  # every rank: a refusal must not leave the others waiting in a collective
            state = load_training_state(state_path, map_location="cpu")
            with warnings.catch_warnings():  # before any dataset is built from it; said once, by rank 0
                if not main:
                    warnings.simplefilter("ignore")
                data = keep_recorded_split(data, run_dir / "data_split.json")
            check_resume_classes(run_dir, list(data.class_names), state["extra"].get("class_names"))
            check_resume_model(state["extra"].get("train_config"), cfg, run_dir)
            if cfg.epochs < int(state["epoch"]):  # nothing would run, and its config.yaml would say fewer epochs
                raise ValueError(f"run {run_dir} has trained {int(state['epoch'])} epochs, more than the {cfg.epochs} "
                                 "asked for: nothing to resume. Pass a larger --epochs to train it further")
        # the run's record (config.yaml, data_split.json) is written once the run is known to start: a refused
        # resume leaves the run it was pointed at as it was, a refused start leaves no folder behind
        per_rank_batch = cfg.batch_size // world
        dataset = train_samples(cfg, data.train)
        try:  # in this process, before the workers: with no readable image each worker's error would come wrapped
            DetectionDataset(list(data.train), None, skip_corrupt=True).first_readable()  # in its traceback
        except CorruptImageError as e:
            raise ValueError(f"the train split of {cfg.data}: {e}") from None
        # a val image the network cannot take whole would stop the run at its first validation, an epoch lost
        check_network_sizes(data.val, cfg.eval_size, f"the val split of {cfg.data}", "train at a larger --image-size")
        if main and data.val and not any(r.num_targets for r in data.val):
            warnings.warn(f"the val split of {cfg.data} holds no object boxes: validation measures nothing, so no "
                          "AP is recorded and no best.safetensors written; give a val split with ground truth",
                          stacklevel=2)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=info.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        batches_of = StepBatchSampler(sampler, per_rank_batch, cfg.accumulate)
        steps_per_epoch = batches_of.steps_per_epoch
        if steps_per_epoch < 1:
            raise ValueError(f"the train split has {len(dataset)} images, fewer than one global batch of "
                             f"{cfg.batch_size}; lower batch_size")
        # more loader processes than this process's share of the CPUs (torchrun starts LOCAL_WORLD_SIZE of them on a
        # machine) only contend with training; the samples do not depend on the worker count, so capping it changes
        # nothing but the speed
        workers = min(cfg.workers, usable_cpus() // max(1, D.env_int("LOCAL_WORLD_SIZE", 1)))
        loader = DataLoader(
            dataset, batch_sampler=batches_of, num_workers=workers, collate_fn=collate,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            worker_init_fn=D.worker_init_fn if workers > 0 else None,
            # its own generator, so creating an iterator never draws from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed + info.rank),
        )
        total_steps = cfg.epochs * steps_per_epoch

        # ------------------------------------------------------------------ model, optimiser, schedule, EMA
        # the model's own side is the one it infers at (whole images); it only seeds the YOLO heads' bias priors
        model_cfg: ModelConfig = get_config(cfg.model, num_classes=len(data.class_names),
                                            class_names=tuple(data.class_names), image_size=cfg.eval_size)
        if model_cfg.loss.dcloss and cfg.dcloss_warmup_fraction is not None:
            # a warm-up relative to the run: every run leaves it and re-weights (a fixed 500 can outlast a run)
            warm = round(cfg.dcloss_warmup_fraction * total_steps)
            model_cfg = dataclasses.replace(model_cfg, loss=dataclasses.replace(model_cfg.loss, dcloss_warmup=warm))
        model = build(model_cfg).to(device)
        if cfg.sync_bn and world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(cfg, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(total_steps, cfg.warmup_iters, cfg.final_lr_ratio)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None

        step, start_epoch, start_step = 0, 0, 0
        best_ap: float | None = None
        skipped, prior_wall = 0, 0.0
        last_metrics: dict[str, Any] = {}
        tel = EpochTelemetry()
        if state is not None:
            check_resume_config(state["extra"].get("train_config"), cfg)
            fits = check_state_dict(model.state_dict(), state["model"], strict=True)  # [] when every key fits
            if fits:  # before load_state_dict's list of thousands of keys, which says nothing a user can act on
                raise ValueError(f"the training state {state_path} does not fit the {cfg.model} model built now: "
                                 f"{'; '.join(fits)[:300]}. Resume with the run's own settings (its config.yaml) or "
                                 "start a new run")
            restore_training_state(state, model, optimizer, scaler if scaler.is_enabled() else None, scheduler, ema)
            # the restored states carry the settings the run started with: this run's settings replace them (the
            # same values when nothing changed; the warning above lists what did)
            apply_config(cfg, model, optimizer, scheduler, total_steps)
            if ema is not None:
                ema.decay, ema.tau = cfg.ema_decay, cfg.ema_tau
            extra = state["extra"]
            planned = (extra.get("train_config") or {}).get("epochs")
            if verbose and planned is not None and int(planned) != cfg.epochs:
                print(f"the learning-rate schedule now spans {cfg.epochs} epochs (the run planned {planned}): its "
                      "cosine continues from this step over the new total")
            step, start_epoch, start_step = int(state["step"]), int(state["epoch"]), int(extra.get("epoch_step", 0))
            was = int((extra.get("train_config") or {}).get("batch_size") or cfg.batch_size)
            if start_step and was != cfg.batch_size:  # the images the interrupted epoch has seen, in steps of now:
                start_step = min(start_step * was // cfg.batch_size, steps_per_epoch)  # not the old step count
            best_ap, skipped = extra.get("best_ap"), int(extra.get("skipped", 0))
            prior_wall, last_metrics = float(extra.get("wall_time_s", 0.0)), dict(extra.get("metrics") or {})
            if main and start_step:  # the interrupted epoch's telemetry so far (summed over ranks when saved)
                tel.load_state_dict(extra.get("telemetry") or {})
            if verbose:
                print(f"resuming {state_path} at epoch {start_epoch + 1}, step {step}")
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
            # atomically: the other ranks of a resume may be reading it (keep_recorded_split) at this moment
            atomic_write(run_dir / "data_split.json",
                         lambda p: p.write_text(json.dumps(data.split, indent=1) + "\n", encoding="utf-8"))
            release_claim(run_dir, started=True)
        if cfg.compile:
            # the dense network only: assignment and losses are data-dependent Python and stay eager.
            # Module.compile() compiles in place, so state_dict keys do not change.
            model.compile_network()
        step_module: nn.Module = LossStep(model)
        ddp: nn.parallel.DistributedDataParallel | None = None
        if world > 1:
            ddp = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
            step_module = ddp
        params = [p for p in model.parameters() if p.requires_grad]
        logger = RunLogger(run_dir, enabled=main, resume_step=step if state_path is not None else None)
        eval_model = ema.module if ema is not None else model
        hardware = hardware_info(device, world)
        if verbose:
            print(f"training {cfg.model} ({sum(p.numel() for p in params) / 1e6:.2f} M params) on "
                  f"{len(dataset)} images, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs, batch "
                  f"{cfg.batch_size} = {world} process(es) x {cfg.accumulate} x {per_rank_batch // cfg.accumulate}"
                  f", {device}; run dir {run_dir}")

        consecutive_bad = 0
        epochs_done = start_epoch
        stop = cfg.max_steps is not None and step >= cfg.max_steps
        # ================================================================== the loop
        for epoch in range(start_epoch, cfg.epochs):
            if stop:
                break
            first = start_step if epoch == start_epoch else 0
            batches_of.set_epoch(epoch, start_step=first)
            if verbose and dataset.late is not None and epoch == dataset.late_from:
                print(f"epoch {epoch + 1}: mosaic closed for the last {cfg.epochs - epoch} epoch(s)")
            step_module.train()
            if first == 0:
                tel = EpochTelemetry()
            batches = iter(loader)
            bar = None
            if verbose:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="step", dynamic_ncols=True, leave=False)
            t_epoch, images_epoch = time.perf_counter(), 0
            t_log, images_log, log_sums, log_batches = time.perf_counter(), 0, {}, 0
            epoch_step = first
            while epoch_step < steps_per_epoch and not stop:
                optimizer.zero_grad(set_to_none=True)
                finite = True
                for micro in range(cfg.accumulate):
                    images, targets = to_device(*next(batches), device, cfg.channels_last)
                    last_micro = micro == cfg.accumulate - 1
                    # DDP all-reduces gradients in the backward of the step's last micro-batch only
                    with ddp.no_sync() if ddp is not None and not last_micro else contextlib.nullcontext():
                        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                            losses, stats = step_module(images, targets)
                            loss = sum(losses.values())
                        # every rank must agree: a rank skipping a backward the others run would hang them in
                        # the gradient all-reduce
                        bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0])
                        finite = finite and bool(D.all_reduce_max(bad)[0] == 0)
                        if finite:
                            scaler.scale(loss / cfg.accumulate).backward()
                    # one device->host copy for all loss parts
                    values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
                    tel.add_batch(values, stats, images.shape[0])
                    for k, v in values.items():
                        log_sums[k] = log_sums.get(k, 0.0) + v
                    log_batches += 1
                    images_epoch += images.shape[0] * world
                    images_log += images.shape[0] * world

                grad_norm = float("nan")
                if finite:
                    scaler.unscale_(optimizer)  # true gradients, for clipping and the p5/p6 telemetry
                    grad_norm = float(nn.utils.clip_grad_norm_(params, cfg.clip_grad or float("inf")))
                    # fp16: the scaler skips inf/nan gradients itself (and lowers its scale); fp32/bf16: we do
                    finite = scaler.is_enabled() or math.isfinite(grad_norm)
                if finite:
                    high = high_level_grad_norms(model)
                    scaler.step(optimizer)
                    scaler.update()
                    if ema is not None:
                        ema.update(model)
                    tel.add_step(high if math.isfinite(grad_norm) else {}, grad_norm)
                    consecutive_bad = 0
                    scheduler.step()
                else:
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    consecutive_bad += 1
                    tel.add_skipped()
                    if main:
                        warnings.warn(f"step {step + 1}: non-finite loss or gradient "
                                      f"({', '.join(f'{k} {v:.4g}' for k, v in values.items())}); step skipped "
                                      f"({skipped} so far)", RuntimeWarning, stacklevel=2)
                    if consecutive_bad >= cfg.nonfinite_limit:
                        raise RuntimeError(
                            f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (last: "
                            f"{values}, lr {optimizer.param_groups[0]['lr']:.3g}); training diverged. Lower lr, "
                            "keep clip_grad on, use amp='bf16' or 'off' instead of fp16, and check the data "
                            f"(boxes, labels); the last good state is in {run_dir / STATE_FILE} if one was saved"
                        )
                    with warnings.catch_warnings():  # the schedule follows the data even when a step is skipped
                        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                        scheduler.step()
                step += 1
                epoch_step += 1
                stop = cfg.max_steps is not None and step >= cfg.max_steps

                if step % cfg.log_every == 0 or epoch_step == steps_per_epoch or stop:
                    mean = {k: v / max(1, log_batches) for k, v in log_sums.items()}
                    mean["loss"] = sum(mean.values())
                    mean = D.all_reduce_mean(mean)
                    elapsed = max(time.perf_counter() - t_log, 1e-9)
                    row = {**mean, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                           "img_per_s": images_log / elapsed, "skipped": skipped}
                    logger.log_step(epoch + 1, step, row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}",
                                        lr=f"{row['lr']:.2e}", refresh=False)
                    t_log, images_log, log_sums, log_batches = time.perf_counter(), 0, {}, 0
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            del batches  # release the epoch's iterator (persistent workers stay)

            # ------------------------------------------------------------------ end of epoch (or of max_steps)
            epoch_done = epoch_step == steps_per_epoch
            if epoch_done:
                epochs_done = epoch + 1
            last_epoch = (epoch_done and epoch + 1 == cfg.epochs) or stop
            tel.sums = D.gather_sum(tel.sums)  # every rank takes part; rank 0 uses the totals
            summary = tel.summary()
            val_now = bool(data.val) and (last_epoch or (epoch_done and (epoch + 1) % cfg.val_every == 0))
            D.barrier()
            if main:
                wall = prior_wall + time.perf_counter() - started
                record = {**summary, "lr": optimizer.param_groups[0]["lr"], "partial": not epoch_done,
                          "img_per_s": images_epoch / max(time.perf_counter() - t_epoch, 1e-9), "wall_time_s": wall}
                improved = False
                if val_now:
                    result: EvalResult = validate(
                        eval_model, data.val, data.class_names, image_size=cfg.eval_size,
                        batch_size=cfg.val_batch_size or 2 * per_rank_batch, device=device,
                        threads=max(1, min(workers, 4)), progress=verbose,
                    )
                    last_metrics = result.to_json_dict()
                    record["val"] = last_metrics
                    ap = last_metrics.get("AP")
                    # best is chosen among whole epochs: a stop mid-epoch (max_steps) is validated and recorded in
                    # last.json, but an uninterrupted run never validates there, so a run resumed after it must not
                    # keep that snapshot as its best (resume is exact)
                    improved = epoch_done and ap is not None and (best_ap is None or ap > best_ap)
                    if improved:
                        best_ap = float(ap)
                logger.log_epoch(epoch + 1, step, record)
                card = training_card(cfg, model_cfg, data, run_dir, epochs=epochs_done, steps=step,
                                     hardware=hardware, wall_time_s=wall, metrics=last_metrics if val_now else {},
                                     telemetry=summary)
                save_checkpoint(eval_model, run_dir / "last.safetensors", {**card, "checkpoint": "last"},
                                half=cfg.half_checkpoint)
                if improved:
                    save_checkpoint(eval_model, run_dir / "best.safetensors", {**card, "checkpoint": "best"},
                                    half=cfg.half_checkpoint)
                save_training_state(
                    run_dir / STATE_FILE, model, optimizer, scaler if scaler.is_enabled() else None, scheduler,
                    ema, epoch=epoch + 1 if epoch_done else epoch, step=step,
                    extra={"epoch_step": 0 if epoch_done else epoch_step, "best_ap": best_ap, "skipped": skipped,
                           "class_names": list(data.class_names),
                           "wall_time_s": wall, "metrics": last_metrics, "train_config": cfg.to_dict(),
                           "telemetry": tel.state_dict() if not epoch_done else {}},
                )
                if verbose:
                    ap_txt = (f", val AP {last_metrics.get('AP'):.4f} AP50 {last_metrics.get('AP50'):.4f}"
                              if val_now and last_metrics.get("AP") is not None else "")
                    print(f"epoch {epoch + 1}/{cfg.epochs}: loss {summary.get('loss_total') or float('nan'):.4f}"
                          f"{ap_txt}, {record['img_per_s']:.1f} img/s, starved {summary.get('starved_rate')}")
            D.barrier()  # nobody starts the next epoch (or returns) before rank 0 has saved
            if stop:
                break

        wall = prior_wall + time.perf_counter() - started
        best_path = run_dir / "best.safetensors"
        return TrainResult(
            run_dir=run_dir,
            last=run_dir / "last.safetensors" if (run_dir / "last.safetensors").is_file() else None,
            best=best_path if best_path.is_file() else None,
            state=run_dir / STATE_FILE if (run_dir / STATE_FILE).is_file() else None,
            metrics=D.broadcast_object(last_metrics),
            best_ap=D.broadcast_object(best_ap),
            epochs=epochs_done,
            steps=step,
            skipped_steps=skipped,
            wall_time_s=wall,
            telemetry=D.broadcast_object(tel.summary() if main else {}),
        )
    except KeyboardInterrupt:  # Ctrl-C: what was kept and how to go on, then the interrupt itself
        if main and run_dir is not None and (run_dir / STATE_FILE).is_file():
            print(f"\ninterrupted: {run_dir / STATE_FILE} holds the run as of its last saved epoch (or --max-steps "
                  f"stop); continue exactly from there with  efpn train --resume {run_dir}", file=sys.stderr)
        raise
    finally:
        if main and run_dir is not None:
            release_run(run_dir, lock)
            release_claim(run_dir, started=(run_dir / "config.yaml").exists())  # a refused start leaves no folder
        if logger is not None:
            logger.close()
        if owns_group:
            D.cleanup_distributed()
