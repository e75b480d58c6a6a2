"""The training loop behind `leukedge train`.

:func:`train` turns a :class:`TrainConfig` into a complete run dir in three steps:
:func:`setup_training`, then per epoch :func:`train_one_epoch` and
:func:`validate_and_checkpoint`, then :func:`finish_run`. It runs as a single
process or under ``torchrun`` (DDP; NCCL on GPUs, gloo on CPUs), resumes exactly
from ``last.pt``, stops early on the validation weighted F1 (the C-NMC challenge
metric) and ends by evaluating the best checkpoint on the test split.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from leukedge.data.cellscale import estimate_cell_fraction
from leukedge.data.layouts import load_dataset
from leukedge.data.records import Dataset, DatasetError, Record
from leukedge.data.splits import Split, load_split, make_split
from leukedge.io import atomic_write_json, atomic_write_text, sweep_stale_temps
from leukedge.predictions import PREDICTIONS_FILE, write_predictions
from leukedge.progress import Reporter
from leukedge.rundir import CorruptRunError, RunDir, RunDirError
from leukedge.rundir import RunExistsError as RunExistsError  # where callers have found it
from leukedge.spec import ModelSpec
from leukedge.train.augment import AugmentConfig
from leukedge.train.checkpoint import (
    load_training_state,
    save_training_state,
    save_weights,
    unwrap,
)
from leukedge.train.colour import with_stain_reference
from leukedge.train.config import LAYOUT_CROP_STYLE, TrainConfig, resume_differences
from leukedge.train.dataset import CellDataset, make_loader
from leukedge.train.evaluate import (
    Predictions,
    metrics_of,
    per_subject_accuracy,
    predict,
    prediction_table,
)
from leukedge.train.finetune import freeze_backbone, init_spec, load_init_weights
from leukedge.train.models import build_model, count_parameters, default_spec, load_run_model
from leukedge.train.plots import plot_confusion, plot_curves
from leukedge.train.reliability import fit_reliability
from leukedge.validate import UsageError

HISTORY_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_images_per_s",
    "val_loss",
    "val_accuracy",
    "val_f1_weighted",
    "val_balanced_accuracy",
    "val_auroc",
    "epoch_seconds",
    "best",
]


class TrainError(RuntimeError):
    """Training that cannot go on (nothing trained in an epoch, a model that cannot take a batch)."""


@dataclass
class Distributed:
    """Where this process sits in a torchrun job (world of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, dist: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda asked for, but torch sees no CUDA GPU; use --device cpu"
            )
        if name == "cuda":
            name = f"cuda:{dist.local_rank}"
    return torch.device(name)


def class_weights(dataset: Dataset, records: list, enabled: bool) -> torch.Tensor:
    """Inverse-frequency weights on the train split (C-NMC is ~68% ALL)."""
    counts = torch.zeros(len(dataset.classes))
    for r in records:
        counts[r.label] += 1
    if not enabled or (counts == 0).any():
        return torch.ones(len(dataset.classes))
    return counts.sum() / (len(counts) * counts)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adam":
        groups[0]["weight_decay"] = 0.0
        return torch.optim.Adam(groups, lr=cfg.resolved_lr())
    return torch.optim.AdamW(groups, lr=cfg.resolved_lr())


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to 1% of the peak, stepped every batch."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resumed_config(cfg: TrainConfig, run: RunDir, explicit: set[str] | None) -> TrainConfig:
    """The run's saved config with what --resume may change taken from ``cfg``.

    Refuses a changed model, input size, data folder or any other setting the run
    was started with, listing each difference, instead of silently ignoring it.
    """
    run.require("config.json", "split.json", "spec.json")
    try:
        saved = TrainConfig.from_dict(run.config())
        saved.validate()
    except (UsageError, TypeError) as e:
        raise CorruptRunError(f"{run.config_path} is not a usable training config: {e}") from None
    diffs = resume_differences(saved, cfg, explicit)
    if diffs:
        raise UsageError(
            f"--resume continues {run.path} with the settings it was started with, and these "
            f"differ: {'; '.join(diffs)}. Leave them out, or start a new run with another --out"
        )
    for name in ("epochs", "workers", "device", "patience", "eval_batch_size"):
        if explicit is None or name in explicit:
            setattr(saved, name, getattr(cfg, name))
    if cfg.data and Path(cfg.data).expanduser().exists():  # the same data, maybe moved
        saved.data = cfg.data
    return saved


def new_run_spec(
    cfg: TrainConfig, dataset: Dataset, train_records: list[Record], reporter: Reporter
) -> tuple[TrainConfig, ModelSpec]:
    """The ModelSpec of a new run (a single split or one fold), from its training images:
    the --init run's spec, or the model's with measured crop geometry and stain reference.
    With --init the config takes the model and input size from that run."""
    if cfg.init:
        spec = init_spec(cfg.init, dataset.classes, dataset.layout)
        cfg.model, cfg.img_size = spec.arch, spec.input_size
        reporter.log(
            f"fine-tuning {cfg.init} ({spec.arch}, {spec.input_size} px, stain "
            f"normalisation {spec.stain_norm}) at lr {cfg.resolved_lr():g}"
            + (", backbone frozen" if cfg.freeze_backbone else "")
        )
        if cfg.stain_norm not in ("none", spec.stain_norm):
            raise RunDirError(
                f"--init {cfg.init} normalises stains by {spec.stain_norm!r}: a fine-tuned "
                f"model keeps it (drop --stain-norm {cfg.stain_norm})"
            )
        return cfg, spec
    crop_style = cfg.crop_style or LAYOUT_CROP_STYLE.get(dataset.layout, "context")
    if cfg.cell_fraction is None:
        fraction, measured = estimate_cell_fraction(train_records, crop_style, seed=cfg.seed)
        reporter.log(
            f"cell fraction {fraction:.2f} ({crop_style} crops, measured on {measured} images)"
        )
    else:
        fraction = cfg.cell_fraction
    spec = default_spec(
        cfg.model,
        dataset.classes,
        dataset.positive_class,
        cfg.img_size,
        crop_style,
        fraction,
        dataset=dataset.layout,
    )
    if cfg.stain_norm != "none":
        spec = with_stain_reference(spec, train_records, cfg.stain_norm, cfg.seed)
        reporter.log(
            f"stain normalisation {cfg.stain_norm}: reference from "
            f"{spec.stain_reference.get('images') if spec.stain_reference else 0} train images"
        )
    return cfg, spec


def _prepare_run(
    cfg: TrainConfig,
    run: RunDir,
    resume: bool,
    reporter: Reporter,
    explicit: set[str] | None = None,
) -> tuple[TrainConfig, Dataset, Split, ModelSpec]:
    """Dataset, split and spec: new ones for a new run, the saved ones on resume."""
    if resume:
        cfg = _resumed_config(cfg, run, explicit)
        dataset = load_dataset(cfg.data, cfg.layout)
        return cfg, dataset, load_split(run.split_path, dataset), run.spec()
    dataset = load_dataset(cfg.data, cfg.layout)
    split = make_split(dataset, cfg.split, cfg.seed)
    for w in split.warnings + dataset.notes:
        reporter.log(f"note: {w}", "note")
    cfg, spec = new_run_spec(cfg, dataset, split.records(dataset, "train"), reporter)
    return cfg, dataset, split, spec


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _is_better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher val weighted F1 wins; on a tie, lower val loss."""
    if best is None:
        return True
    if row["val_f1_weighted"] > best["val_f1_weighted"] + 1e-6:
        return True
    return (
        abs(row["val_f1_weighted"] - best["val_f1_weighted"]) <= 1e-6
        and row["val_loss"] < best["val_loss"]
    )


@dataclass
class TrainSetup:
    """Everything an epoch needs, built once per run (or per resumed run)."""

    cfg: TrainConfig
    run: RunDir
    dist: Distributed
    device: torch.device
    reporter: Reporter
    dataset: Dataset
    split: Split
    spec: ModelSpec
    train_records: list[Record]
    val_records: list[Record]
    test_records: list[Record]
    model: nn.Module
    ddp_model: nn.Module
    train_set: CellDataset
    sampler: DistributedSampler | None
    drop_last: bool
    loss_fn: nn.Module
    eval_loss: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    fresh: bool = False  # a new run whose files are written after its first epoch


@dataclass
class Progress:
    """What changes from epoch to epoch; all of it but ``skipped`` is saved in last.pt."""

    start_epoch: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stale: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class EpochStats:
    """One epoch's training pass, as the validation row reports it."""

    started: float  # time.perf_counter() at the start of the epoch
    train_seconds: float
    loss_sum: float
    seen: int


def _init_distributed(cfg: TrainConfig) -> Distributed:
    dist = Distributed.from_env()
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return dist


def setup_training(
    cfg: TrainConfig,
    resume: bool = False,
    reporter: Reporter | None = None,
    explicit: set[str] | None = None,
) -> tuple[TrainSetup, Progress]:
    """Run dir, data, split, model, optimizer and schedule; on resume, the saved state too.

    Every argument is checked and the model built before anything is written: a new
    run's files appear after its first epoch, spec.json last (see
    :func:`_write_new_run`), so a run that never trained is not a run.
    ``explicit`` names the settings the user gave (see :func:`_resumed_config`).
    """
    reporter = reporter or Reporter()
    cfg.validate()
    run = RunDir(cfg.out)
    dist = _init_distributed(cfg)
    if dist.is_main:
        run.check_target(resume)
    device = resolve_device(cfg.device, dist)
    if not dist.is_main:
        reporter = Reporter()
    cfg, dataset, split, spec = _prepare_run(cfg, run, resume, reporter, explicit)
    if dist.world > 1:
        torch.distributed.barrier()
    if dist.is_main:
        sweep_stale_temps(run.path)  # checkpoints a killed run was writing

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spec.num_classes, spec.input_size, cfg.pretrained)
    if cfg.init:
        load_init_weights(model, cfg.init)
        if cfg.freeze_backbone:
            freeze_backbone(model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_records = split.records(dataset, "train")
    val_records = split.records(dataset, "val")
    test_records = split.records(dataset, "test")
    if not train_records or not val_records:
        raise DatasetError(
            f"split has {len(train_records)} train and {len(val_records)} val images; "
            "both need at least one"
        )
    weights = class_weights(dataset, train_records, cfg.class_weights).to(device)
    train_set = CellDataset(
        train_records, spec, train=True, seed=cfg.seed, augment_cfg=AugmentConfig(hed=cfg.hed_aug)
    )
    sampler: DistributedSampler | None = (
        DistributedSampler(
            train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed
        )
        if dist.world > 1
        else None
    )
    per_rank = math.ceil(len(train_set) / dist.world)
    # A last batch of one image is dropped when there are others (BatchNorm statistics of one
    # image are noise); --batch-size 1, or a split of one image, trains image by image.
    drop_last = per_rank % cfg.batch_size == 1 and per_rank > cfg.batch_size
    steps_per_epoch = per_rank // cfg.batch_size if drop_last else -(-per_rank // cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    s = TrainSetup(
        cfg=cfg,
        run=run,
        dist=dist,
        device=device,
        reporter=reporter,
        dataset=dataset,
        split=split,
        spec=spec,
        train_records=train_records,
        val_records=val_records,
        test_records=test_records,
        model=model,
        ddp_model=model,
        train_set=train_set,
        sampler=sampler,
        drop_last=drop_last,
        loss_fn=nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing),
        eval_loss=nn.CrossEntropyLoss(weight=weights),
        optimizer=optimizer,
        schedule=make_schedule(optimizer, cfg, steps_per_epoch),
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
        use_amp=use_amp,
        fresh=not resume,
    )
    progress = _restore(s) if resume and run.last_path.exists() else Progress()
    if dist.world > 1:
        s.ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if dist.is_main:
        reporter.log(
            f"{cfg.model}: {count_parameters(model) / 1e6:.1f} M parameters on {device}"
            f"{f' x{dist.world} processes' if dist.world > 1 else ''}; "
            f"{len(train_records)} train / {len(val_records)} val / {len(test_records)} test "
            f"images, split by {split.unit}"
        )
    return s, progress


def _restore(s: TrainSetup) -> Progress:
    """Model, optimizer, schedule, scaler, RNG and early-stopping state from last.pt."""
    state = load_training_state(s.run.last_path)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.schedule.load_state_dict(state["schedule"])
    s.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    s.reporter.log(f"resuming {s.run.path} after epoch {state['epoch']}")
    return Progress(
        start_epoch=state["epoch"] + 1,
        history=state["history"],
        best=state["best"],
        stale=state["stale"],
    )


def train_one_epoch(s: TrainSetup, epoch: int, skipped: dict[str, str]) -> EpochStats:
    """One pass over the train split; unreadable files are added to ``skipped``."""
    cfg, device = s.cfg, s.device
    t0 = time.perf_counter()
    s.train_set.epoch = epoch
    if s.sampler is not None:
        s.sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    loader = make_loader(
        s.train_set,
        cfg.batch_size,
        shuffle=True,
        workers=cfg.workers,
        generator=gen,
        sampler=s.sampler,
        drop_last=s.drop_last,
    )
    task = s.reporter.task(f"epoch {epoch}/{cfg.epochs}", len(s.train_records) // s.dist.world)
    s.ddp_model.train()
    total_loss, seen = 0.0, 0
    for batch in loader:
        skipped.update(dict(batch["errors"]))
        if batch["x"] is None or len(batch["x"]) == 0:
            continue
        x = batch["x"].to(device, non_blocking=True)
        y = batch["y"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        loss = _forward_loss(s, x, y)
        if loss is None:
            continue
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        if cfg.grad_clip:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.schedule.step()
        total_loss += float(loss.detach()) * len(x)
        seen += len(x)
        rate = seen / max(1e-9, time.perf_counter() - t0)
        s.reporter.advance(task, len(x), loss=f"{total_loss / seen:.3f}", img_s=f"{rate:.1f}")
    s.reporter.finish(task)
    if seen == 0:
        raise TrainError(
            f"epoch {epoch} trained on no image: all {len(s.train_records)} train images were "
            "unreadable or skipped (see `leukedge data check`); nothing was saved"
        )
    return EpochStats(t0, time.perf_counter() - t0, total_loss, seen)


def _forward_loss(s: TrainSetup, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """The batch's loss; None for a one-image batch that BatchNorm cannot normalise.

    A single image has statistics over its pixels, unless a layer's feature map is
    1x1 (small inputs to deep models): then --batch-size 1 cannot train at all.
    """
    try:
        with torch.autocast(x.device.type, enabled=s.use_amp):
            return s.loss_fn(s.ddp_model(x), y)
    except ValueError as e:
        if len(x) != 1 or "more than 1 value per channel" not in str(e):
            raise
        if s.cfg.batch_size == 1:
            raise UsageError(
                f"--batch-size 1 cannot train {s.cfg.model} at --img-size {s.cfg.img_size}: a "
                "BatchNorm layer sees one value per channel; use --batch-size 2 or more"
            ) from None
        return None


def validate_and_checkpoint(
    s: TrainSetup, progress: Progress, epoch: int, stats: EpochStats
) -> bool:
    """Validate, keep the best weights, save last.pt and history.csv; True to stop early.

    Only the main process validates; the stop decision is broadcast to the others.
    """
    stop = torch.zeros(1)
    if s.dist.is_main:
        stop[0] = float(_validate_and_checkpoint_main(s, progress, epoch, stats))
    if s.dist.world > 1:
        torch.distributed.broadcast(stop, src=0)
    return bool(stop[0])


def _validate_and_checkpoint_main(
    s: TrainSetup, progress: Progress, epoch: int, stats: EpochStats
) -> bool:
    cfg, run = s.cfg, s.run
    val = predict(
        s.model, s.val_records, s.spec, s.device, cfg.eval_batch_size, cfg.workers, s.eval_loss
    )
    progress.skipped.update(dict(val.errors))
    vm = metrics_of(val, s.spec)
    row = {
        "epoch": epoch,
        "lr": s.optimizer.param_groups[0]["lr"],
        "train_loss": stats.loss_sum / max(1, stats.seen),
        "train_images_per_s": stats.seen * s.dist.world / max(1e-9, stats.train_seconds),
        "val_loss": vm["loss"],
        "val_accuracy": vm["accuracy"],
        "val_f1_weighted": vm["f1_weighted"],
        "val_balanced_accuracy": vm["balanced_accuracy"],
        "val_auroc": vm["auroc"],
        "epoch_seconds": time.perf_counter() - stats.started,
    }
    improved = _is_better(row, progress.best)
    row["best"] = int(improved)
    progress.history.append(row)
    if s.fresh:
        _write_new_run(s)
    if improved:
        progress.best = {k: row[k] for k in ("epoch", "val_f1_weighted", "val_loss")}
        progress.stale = 0
        save_weights(run.checkpoint_path, s.model)
    else:
        progress.stale += 1
    save_training_state(
        run.last_path,
        {
            "model": unwrap(s.model).state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "schedule": s.schedule.state_dict(),
            "scaler": s.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": progress.history,
            "best": progress.best,
            "stale": progress.stale,
        },
    )
    _write_history(run.history_path, progress.history)
    if s.fresh:  # the run dir's identity, written last: from now on this is a run
        s.spec.save(run.spec_path)
        s.fresh = False
    s.reporter.log(
        f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  "
        f"val acc {row['val_accuracy']:.3f}  F1w {row['val_f1_weighted']:.3f}  "
        f"AUROC {row['val_auroc']:.3f}  "
        f"{row['train_images_per_s']:.1f} img/s{'  *best*' if improved else ''}"
    )
    if progress.stale >= cfg.patience:
        s.reporter.log(f"early stop: no better val weighted F1 for {cfg.patience} epochs")
        return True
    return False


def _write_new_run(s: TrainSetup) -> None:
    """split.json and config.json of a new run, once its first epoch has trained."""
    s.run.path.mkdir(parents=True, exist_ok=True)
    s.split.save(s.run.split_path, s.dataset)
    atomic_write_json(s.run.config_path, s.cfg.to_dict())


def draw_curves(s: TrainSetup, progress: Progress) -> None:
    """curves.png of the epochs done so far (main process, once at least one is done)."""
    if s.dist.is_main and progress.history:
        plot_curves(progress.history, s.run.path / "curves.png")


def train(
    cfg: TrainConfig,
    resume: bool = False,
    reporter: Reporter | None = None,
    explicit: set[str] | None = None,
) -> dict[str, Any]:
    """Train, validate every epoch, keep the best, evaluate it on test; returns metrics.json.

    curves.png is drawn once, when training ends, stops early or is interrupted.
    ``explicit``: the settings the user gave, checked against the run on ``resume``.
    """
    s, progress = setup_training(cfg, resume, reporter, explicit)
    try:
        for epoch in range(progress.start_epoch, s.cfg.epochs + 1):
            stats = train_one_epoch(s, epoch, progress.skipped)
            if validate_and_checkpoint(s, progress, epoch, stats):
                break
    except BaseException:
        _draw_curves_quietly(s, progress)
        raise
    draw_curves(s, progress)

    result: dict[str, Any] = {}
    if s.dist.is_main:
        result = finish_run(
            s.run,
            s.spec,
            s.split,
            s.dataset,
            s.test_records,
            s.device,
            s.cfg,
            progress.history,
            progress.best,
            progress.skipped,
            s.reporter,
        )
    if s.dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _draw_curves_quietly(s: TrainSetup, progress: Progress) -> None:
    """Curves of an interrupted run; a plotting error must not hide why the run stopped."""
    try:
        draw_curves(s, progress)
    except Exception as e:
        s.reporter.log(f"note: could not draw curves.png ({type(e).__name__}: {e})", "note")


def finish_run(
    run: RunDir,
    spec: ModelSpec,
    split: Split,
    dataset: Dataset,
    test_records: list,
    device: torch.device,
    cfg: TrainConfig,
    history: list[dict],
    best: dict | None,
    skipped: dict[str, str],
    reporter: Reporter,
) -> dict[str, Any]:
    """Evaluate the best checkpoint on test and write metrics.json + confusion.png."""
    model = load_run_model(run).to(device)
    best_row = next((h for h in history if best and h["epoch"] == best["epoch"]), None)
    result: dict[str, Any] = {
        "model": cfg.model,
        "backbone": spec.backbone,
        "parameters": count_parameters(model),
        "best_epoch": best["epoch"] if best else None,
        "epochs_run": len(history),
        "split_unit": split.unit,
        "split_mode": split.mode,
        "split_counts": split.counts(dataset),
        "train_images_per_s": (
            sum(h["train_images_per_s"] for h in history) / len(history) if history else None
        ),
        "wall_seconds": sum(h["epoch_seconds"] for h in history),
        "val": {k: best_row[k] for k in ("val_accuracy", "val_f1_weighted", "val_auroc")}
        if best_row
        else None,
        "test": None,
    }
    pred: Predictions | None = None
    if test_records:
        pred = predict(
            model, test_records, spec, device, cfg.eval_batch_size, cfg.workers, features=True
        )
        skipped.update(dict(pred.errors))
        result["test"] = metrics_of(pred, spec)
        result["test"]["per_subject"] = per_subject_accuracy(pred, spec.classes)
        write_predictions(run.path / PREDICTIONS_FILE, prediction_table(pred, spec, dataset))
        plot_confusion(result["test"]["confusion"], spec.classes, run.path / "confusion.png")
    else:
        reporter.log(
            "note: the split has no test images; metrics.json holds no test figures", "note"
        )
    train_records, val_records = split.records(dataset, "train"), split.records(dataset, "val")
    _, reliability = fit_reliability(
        run,
        spec,
        model,
        train_records,
        val_records,
        pred,
        device,
        cfg.eval_batch_size,
        cfg.workers,
        reporter,
        cfg.seed,
    )
    result.update(reliability)
    result["stain_norm"] = spec.stain_norm
    result["hed_aug"] = cfg.hed_aug
    result["init"] = cfg.init
    result["skipped_files"] = [{"path": p, "problem": why} for p, why in sorted(skipped.items())]
    atomic_write_json(run.metrics_path, result)
    if skipped:
        reporter.log(
            f"skipped {len(skipped)} unreadable file(s); listed in {run.metrics_path}", "note"
        )
    return result
