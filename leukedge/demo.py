"""`leukedge demo`: the whole path on synthetic data, end to end, on a laptop CPU.

Synthesize cells and frames -> train the small CNN -> evaluate on the test
subjects. Every step is the same library call a user makes; the demo only
chooses small sizes so it finishes in minutes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEMO_IMG_SIZE = 64


def _step(console: Console, title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.perf_counter()


def run_demo(
    out: str | Path,
    n: int = 1600,
    epochs: int = 4,
    seed: int = 0,
    frames: int = 12,
    console: Console | None = None,
) -> dict[str, Any]:
    from leukedge.data.synth import synthesize
    from leukedge.progress import RichReporter
    from leukedge.train.config import TrainConfig
    from leukedge.train.loop import train

    console = console or Console()
    out = Path(out)
    data_dir, run_dir = out / "data", out / "runs" / "cnn"
    summary: dict[str, Any] = {"out": str(out)}
    timings: dict[str, float] = {}

    t0 = _step(console, "1/3 synthesize cells and frames")
    with RichReporter(console) as rep:
        task = rep.task("synthesizing", n + frames)
        synthesize(data_dir, n=n, frames=frames, seed=seed, progress=lambda i, t: rep.advance(task))
    timings["synthesize"] = time.perf_counter() - t0

    t0 = _step(console, "2/3 train the CNN (subject-level split)")
    if run_dir.exists():  # a previous demo run: start over, the demo owns this folder
        import shutil

        shutil.rmtree(run_dir)
    cfg = TrainConfig(
        model="cnn",
        data=str(data_dir),
        out=str(run_dir),
        epochs=epochs,
        batch_size=32,
        img_size=DEMO_IMG_SIZE,
        seed=seed,
        workers=1,
        patience=epochs,
    )
    with RichReporter(console) as rep:
        result = train(cfg, reporter=rep)
    timings["train"] = time.perf_counter() - t0
    summary["test"] = {k: result["test"][k] for k in ("accuracy", "f1_weighted", "auroc")}

    t0 = _step(console, "3/3 results")
    table = Table(title="synthetic test subjects (not a claim about real data)")
    for col in ("accuracy", "weighted F1", "AUROC"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{summary['test'][k]:.3f}" for k in ("accuracy", "f1_weighted", "auroc")))
    console.print(table)
    timings["report"] = time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    console.print(f"data:     {data_dir}  (cells/, frames/)")
    console.print(
        f"run dir:  {run_dir}  (spec.json, checkpoint.pt, split.json, history.csv, "
        "curves.png, confusion.png, metrics.json)"
    )
    console.print(f"time:     {summary['timings_s']}")
    return summary
