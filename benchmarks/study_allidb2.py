"""The study's question on the data at hand: which of the three models should a lab use?

    python benchmarks/study_allidb2.py [--data ../shared/data/all-idb2] [--work /tmp/study]

The three models (cnn, resnet50, vit-hybrid) on ALL-IDB2 with 5-fold
cross-validation on this CPU, every image scored once by a model that did not
train on it; then ``leukedge export`` + ``leukedge bench`` of fold 0 of each
(latency per backend: the Pareto plot), then ``leukedge compare`` of the three.
Settings are small enough for two CPU cores: 64 px inputs, 10 epochs,
batch 16, no pretrained weights (no network here); even so the three models
take about two hours of training here (resnet50 half of it, the cnn a quarter
of an hour), so `--models cnn` is the quick check. Every phase resumes: re-running skips finished folds, exports
and benches.

Writes benchmarks/results/study_allidb2.md (+ .json, and the plots under
benchmarks/results/study_allidb2/). Run dirs stay under --work (not committed).
ALL-IDB2 has no subject ids: folds are by image, so the figures are optimistic
for new patients, and the intervals are over images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leukedge.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from leukedge.machine import describe_machine, markdown_machine  # noqa: E402
from leukedge.progress import PrintReporter  # noqa: E402

MODELS = ("cnn", "resnet50", "vit-hybrid")
PLOTS = ("pareto.png", "roc.png", "confusion.png")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "all-idb2"))
    ap.add_argument("--work", default="/tmp/study")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="torch,ort-fp32,ort-int8")
    ap.add_argument("--no-bench", action="store_true", help="skip export + bench (no latency)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    return ap.parse_args()


def train_phase(args: argparse.Namespace, models: list[str]) -> dict[str, float]:
    from leukedge.train.config import TrainConfig
    from leukedge.train.folds import train_folds

    walls: dict[str, float] = {}
    for model in models:
        cfg = TrainConfig(
            model=model,
            data=args.data,
            out=str(Path(args.work) / model),
            epochs=args.epochs,
            batch_size=args.batch_size,
            img_size=args.img_size,
            seed=args.seed,
            workers=1,
            patience=args.epochs,  # keep the best-val checkpoint of all epochs
        )
        t0 = time.perf_counter()
        train_folds(cfg, args.folds, reporter=PrintReporter())
        walls[model] = time.perf_counter() - t0
        print(f"{model}: {args.folds} folds in {walls[model] / 60:.1f} min", flush=True)
    return walls


def bench_phase(args: argparse.Namespace, models: list[str]) -> None:
    """Export and bench fold 0 of each model: latency does not depend on the fold."""
    from leukedge.bench import run_bench
    from leukedge.export import export_run

    for model in models:
        fold0 = Path(args.work) / model / "fold-0"
        if (fold0 / "bench" / "report.json").is_file():
            continue
        if not (fold0 / "export" / "export.json").is_file():
            export_run(fold0, precisions=("fp32", "int8"))
        run_bench(
            fold0,
            backends=args.backends,
            batch_sizes=(1, 16),
            warmup=5,
            iters=30,
            min_time_s=0.5,
            max_time_s=5.0,
            reporter=PrintReporter(),
        )


def write_results(args: argparse.Namespace, models: list[str], report: dict[str, Any]) -> None:
    results = Path(args.results)
    plots = results / "study_allidb2"
    plots.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        src = Path(report["out"]) / name
        if src.is_file():
            shutil.copyfile(src, plots / name)
    kfold = {m: read_json(Path(args.work) / m / "metrics.json") for m in models}
    train_min = {m: kfold[m]["wall_seconds"] / 60 for m in models}
    folds_table = [
        "| model | best epoch per fold | accuracy | weighted F1 | AUROC | training |",
        "|---|---|---|---|---|---|",
    ]
    for m in models:
        k = kfold[m]
        spread = [
            f"{k['mean'][x]:.3f} ± {k['std'][x]:.3f}" for x in ("accuracy", "f1_weighted", "auroc")
        ]
        epochs = ", ".join(str(f["best_epoch"]) for f in k["per_fold"])
        folds_table.append(
            f"| {m} | {epochs} | " + " | ".join(spread) + f" | {train_min[m]:.1f} min |"
        )
    machine = describe_machine()
    head = [
        "# The study on ALL-IDB2: three models, 5-fold cross-validation (CPU)",
        "",
        markdown_machine(machine),
        "",
        f"Command: `python benchmarks/study_allidb2.py` (data {args.data}). Settings: "
        f"{args.folds}-fold cross-validation (stratified; by image: ALL-IDB2 has no subject ids), "
        f"{args.img_size} px, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}, "
        "AdamW with warm-up + cosine, class weights, augmentation, no pretrained weights "
        "(no network); per fold 15 % of the training folds are the validation split that "
        "picks the best epoch. Latency: fold 0 of each model exported and benched "
        f"({args.backends}, batch 1 and 16).",
        "",
        "Training time (sum of epochs over the folds): "
        + ", ".join(f"{m} {train_min[m]:.1f} min" for m in models)
        + f"; {sum(train_min.values()):.0f} min in all, on two cores shared with other jobs "
        "(times are pessimistic; export, bench and compare add a few minutes).",
        "",
        f"Per fold (mean ± std over the {args.folds} test folds of about "
        f"{kfold[models[0]]['images'] // args.folds} images each; the spread is what one "
        "small test split hides):",
        "",
        *folds_table,
        "",
        "The results as `leukedge compare` wrote them (plots in [study_allidb2/](study_allidb2/)):",
        "",
    ]
    body = (Path(report["out"]) / "report.md").read_text()
    body = body.replace("](", "](study_allidb2/") if "](" in body else body
    atomic_write_text(results / "study_allidb2.md", "\n".join(head) + "\n" + _demote(body))
    atomic_write_json(
        results / "study_allidb2.json",
        {
            "settings": {k: v for k, v in vars(args).items() if k != "results"},
            "train_minutes": train_min,
            "machine": machine,
            "compare": report,
        },
    )


def _demote(markdown: str) -> str:
    """The compare report's headings one level down, under this page's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def main() -> None:
    args = parse_args()
    models = args.models.split(",")
    train_phase(args, models)
    if not args.no_bench:
        bench_phase(args, models)
    from leukedge.compare import compare_runs

    report = compare_runs(
        [Path(args.work) / m for m in models],
        out=Path(args.work) / "compare",
        reporter=PrintReporter(),
    )
    write_results(args, models, report)
    print((Path(args.results) / "study_allidb2.md").read_text())


if __name__ == "__main__":
    main()
