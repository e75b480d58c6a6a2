"""`leukedge train` and `leukedge evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from leukedge.cli import params
from leukedge.cli.common import (
    app,
    confusion_table,
    console,
    fmt,
    friendly_errors,
    metrics_table,
    print_json,
    print_shift_warning,
    shift_line,
)
from leukedge.validate import MAX_BATCH

EVAL_SPLITS = ("train", "val", "test", "all")


# Train options -> TrainConfig fields, for telling what the user set from the defaults.
_CONFIG_FIELDS = {
    "data": "data",
    "model": "model",
    "arch": "model",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "img_size": "img_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "optimizer": "optimizer",
    "patience": "patience",
    "device": "device",
    "pretrained": "pretrained",
    "split": "split",
    "seed": "seed",
    "workers": "workers",
    "crop_style": "crop_style",
    "layout": "layout",
}


def _explicit(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields the user gave on the command line (or through the environment)."""
    given = set()
    for param, name in _CONFIG_FIELDS.items():
        source = ctx.get_parameter_source(param)  # an enum of click's or of typer's own click
        if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(name)
    return given


if TYPE_CHECKING:
    from leukedge.train.config import TrainConfig


@app.command()
@friendly_errors
def train(
    ctx: typer.Context,
    data: Path = typer.Option(
        ..., "--data", help="Dataset folder (see `leukedge data check --help`)."
    ),
    model: str = typer.Option("cnn", "--model", help="cnn | resnet50 | vit-hybrid"),
    arch: str | None = typer.Option(
        None, "--arch", help="Any timm model name (overrides --model)."
    ),
    out: Path = typer.Option(..., "--out", help="Run dir to create (runs/NAME)."),
    epochs: int = typer.Option(50, help="Maximum epochs (early stopping may end sooner)."),
    batch_size: int = typer.Option(32, help="Images per step (per process under torchrun)."),
    img_size: int = typer.Option(224, help="Model input size in pixels."),
    lr: float | None = typer.Option(
        None, help="Peak learning rate (default 1e-3 for cnn, 3e-4 for timm models)."
    ),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    optimizer: str = typer.Option("adamw", help="adamw | adam"),
    patience: int = typer.Option(
        10, help="Stop after this many epochs without a better val weighted F1."
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    pretrained: str | None = typer.Option(
        None, help="'timm' for hub weights, or a local weights file."
    ),
    split: str = typer.Option("subject", help="subject (70/15/15 by patient) | official (C-NMC)"),
    seed: int = typer.Option(0, help="Seed for the split, initialisation and augmentation."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last epoch."
    ),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    crop_style: str | None = typer.Option(
        None, help="masked | context (default: from the layout)."
    ),
    layout: str = typer.Option("auto", help="auto | cnmc | allidb2 | folders | synthetic"),
    folds: int = typer.Option(
        0,
        "--folds",
        help="K-fold cross-validation by subject: one run per fold under --out "
        "(fold-0 ... fold-K-1), pooled out-of-fold predictions (oof.csv) and metrics "
        "with 95% intervals. Re-run the same command to continue unfinished folds.",
    ),
    stain_norm: str = typer.Option(
        "none",
        "--stain-norm",
        callback=params.one_of("--stain-norm", ("none", "reinhard", "macenko")),
        help="none | reinhard | macenko: re-colour every crop to the training split's stain "
        "statistics (stored in the spec; the runtime does the same).",
    ),
    hed_aug: bool = typer.Option(
        False, "--hed-aug", help="Jitter stain concentrations in HED space while training."
    ),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Fine-tune from this run dir: its weights and spec; default lr a tenth of usual.",
    ),
    freeze_backbone: bool = typer.Option(
        False, "--freeze-backbone", help="With --init: train only the classifier head."
    ),
) -> None:
    """Train a classifier; writes spec.json, checkpoint.pt, split.json, history, plots, metrics.

    Also fits, on the validation split, the temperature that calibrates probabilities and
    the domain-shift threshold (shift.npz), and measures both on the test split.
    Example: leukedge train --model resnet50 --data ~/data/C-NMC_Leukemia --out runs/r50
    New microscope: leukedge train --init runs/r50 --data my-cells --out runs/r50-mylab
    Multi-GPU: torchrun --nproc-per-node 4 -m leukedge train ... (same arguments).
    """
    from leukedge.data.layouts import detect_layout
    from leukedge.progress import RichReporter
    from leukedge.rundir import RunDir
    from leukedge.train.config import TrainConfig

    cfg = TrainConfig(
        model=arch or model,
        data=str(data),
        out=str(out),
        epochs=epochs,
        batch_size=batch_size,
        img_size=img_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        patience=patience,
        device=device,
        pretrained=pretrained,
        split=split,
        seed=seed,
        workers=workers,
        crop_style=crop_style,
        layout=layout,
        stain_norm=stain_norm,
        hed_aug=hed_aug,
        init=str(init) if init else None,
        freeze_backbone=freeze_backbone,
    )
    cfg.validate()  # every value, --data and --out checked before torch is imported
    if cfg.layout == "auto":
        detect_layout(cfg.data)
    if folds:
        _train_folds(cfg, folds)
        return
    RunDir(out).check_target(resume)
    from leukedge.train.loop import train as run_training

    with RichReporter(console) as rep:
        result = run_training(cfg, resume=resume, reporter=rep, explicit=_explicit(ctx))
    if not result:  # a non-zero rank under torchrun
        return
    if result.get("test"):
        console.print(metrics_table(f"test split ({result['split_unit']}-level)", result["test"]))
        console.print(confusion_table(result["test"]))
    cal, shift = result.get("calibration") or {}, result.get("domain_shift") or {}
    if cal:
        console.print(f"temperature {cal['temperature']:.3f} (fitted on val)")
    if shift.get("test_flagged_fraction") is not None:
        console.print(
            f"domain-shift score flags {shift['test_flagged_fraction']:.1%} of the held-out "
            "test cells (threshold: 95th percentile of val)"
        )
    console.print(
        f"best epoch {result['best_epoch']} of {result['epochs_run']}; run dir [bold]{out}[/] "
        "(spec.json, checkpoint.pt, split.json, shift.npz, history.csv, curves.png, "
        "confusion.png, reliability.png, metrics.json)"
    )
    console.print(f"next: leukedge export {out}")


def _train_folds(cfg: TrainConfig, k: int) -> None:
    from leukedge.progress import RichReporter
    from leukedge.stats import METRICS
    from leukedge.train.folds import train_folds

    with RichReporter(console) as rep:
        result = train_folds(cfg, k, reporter=rep)
    table = Table(title=f"{k}-fold cross-validation ({result['split_unit']}-level folds)")
    for col in ("metric", "per fold", "mean ± std", f"pooled, n={result['images']} [95% CI]"):
        table.add_column(col, justify="right")
    for m, label in METRICS.items():
        table.add_row(
            label,
            " ".join(fmt(row[m], 3) for row in result["per_fold"]),
            f"{fmt(result['mean'][m], 3)} ± {fmt(result['std'][m], 3)}",
            _with_ci(result["pooled"][m]),
        )
    console.print(table)
    console.print(
        f"95% intervals: bootstrap over {result['bootstrap']['units']} "
        f"{result['bootstrap']['unit']}s. Run dir [bold]{cfg.out}[/] (folds.json, fold-*/, "
        f"oof.csv, metrics.json)"
    )
    console.print(f"next: leukedge compare {cfg.out} OTHER_RUN ...")


def _with_ci(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{fmt(entry['estimate'], 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]"


@app.command()
@friendly_errors
def evaluate(
    run: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="Run dir made by `leukedge train`."
    ),
    data: Path | None = typer.Option(None, help="Another copy of the data, or another dataset."),
    split: str = typer.Option(
        "test", help="train | val | test | all", callback=params.one_of("--split", EVAL_SPLITS)
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda", callback=params.device()),
    batch_size: int = typer.Option(64, min=1, max=MAX_BATCH, help="Images per forward pass."),
    workers: int = typer.Option(2, min=0, max=256, help="DataLoader worker processes."),
    out: Path | None = typer.Option(
        None, help="JSON output (default: RUN/eval_<layout>_<split>.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a run's best checkpoint on a split (per-subject accuracy included).

    Example: leukedge evaluate runs/r50 --split test
    """
    from leukedge.progress import Reporter, RichReporter
    from leukedge.rundir import RunDir

    RunDir(run).require("spec.json", "checkpoint.pt")  # before torch is imported
    from leukedge.train.evaluate_run import evaluate_run

    if as_json:
        result = evaluate_run(run, data, split, device, batch_size, workers, out, Reporter())
        print_json(result)
        return
    with RichReporter(console) as rep:
        result = evaluate_run(run, data, split, device, batch_size, workers, out, rep)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(metrics_table(f"{result['split']} split of {result['data']}", result["metrics"]))
    console.print(confusion_table(result["metrics"]))
    console.print(_reliability_table(result))
    if result["per_subject"]:
        table = Table(title="per subject")
        for col in ("subject", "class", "images", "accuracy"):
            table.add_column(col, justify="right")
        for s, v in result["per_subject"].items():
            table.add_row(s, v["class"], str(v["n"]), fmt(v["accuracy"], 3))
        console.print(table)
    console.print(f"written to {result['written_to']}")
    print_shift_warning(result["domain_shift"])


def _reliability_table(result: dict[str, Any]) -> Table:
    """How sure the answers are: calibration, blast ratios and domain shift."""
    table = Table(title="reliability", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    cal = result["calibration"]
    table.add_row(
        "calibration",
        f"temperature {cal['temperature']:.3f}, ECE {fmt(cal['ece'], 3)}, "
        f"{cal['uncertain']} unsure (P in {cal['uncertain_band']})",
    )
    br, adj = result["blast_ratio"], result["blast_ratio_adjusted"]
    if br["ratio"] is not None:
        table.add_row(
            "called ALL", f"{br['ratio']:.3f} (95% CI {br['ci95'][0]:.3f}-{br['ci95'][1]:.3f})"
        )
    if adj.get("ratio") is not None:
        table.add_row(
            "adjusted", f"{adj['ratio']:.3f} (95% CI {adj['ci95'][0]:.3f}-{adj['ci95'][1]:.3f})"
        )
    table.add_row("domain shift", shift_line(result["domain_shift"]))
    return table


# ---------------------------------------------------------------------------- demo
