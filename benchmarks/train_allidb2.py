"""Train the three classifiers on ALL-IDB2 on this machine and record what they reach.

    python benchmarks/train_allidb2.py [--data ../shared/data/all-idb2] [--work benchmarks/work]

Writes benchmarks/results/train_allidb2.json and .md. The run dirs go under
--work (not committed) and are reused by the export and bench benchmarks.
ALL-IDB2 has no subject ids, so its split is by image (stated in the results);
it separates pipelines more than models (a small CNN can reach 100% here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from leukedge.io import atomic_write_json, atomic_write_text
from leukedge.machine import describe_machine, markdown_machine
from leukedge.progress import PrintReporter
from leukedge.train.config import TrainConfig
from leukedge.train.loop import train

REPO = Path(__file__).resolve().parents[1]

# Chosen so the three fit in about an hour on a 2-core CPU.
PLAN = {
    "cnn": {"img_size": 128, "epochs": 30, "batch_size": 16},
    "resnet50": {"img_size": 128, "epochs": 20, "batch_size": 16},
    "vit-hybrid": {"img_size": 128, "epochs": 20, "batch_size": 16},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "all-idb2"))
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work"))
    ap.add_argument("--models", default=",".join(PLAN))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    rows = []
    for model in args.models.split(","):
        plan = PLAN[model]
        out = Path(args.work) / f"allidb2-{model}"
        cfg = TrainConfig(
            model=model,
            data=args.data,
            out=str(out),
            workers=1,
            seed=0,
            patience=max(8, plan["epochs"] // 2),
            **plan,
        )
        t0 = time.perf_counter()
        metrics = train(cfg, resume=(out / "last.pt").exists(), reporter=PrintReporter())
        wall = time.perf_counter() - t0
        test = metrics["test"]
        rows.append(
            {
                "model": model,
                **plan,
                "parameters": metrics["parameters"],
                "best_epoch": metrics["best_epoch"],
                "epochs_run": metrics["epochs_run"],
                "test_accuracy": test["accuracy"],
                "test_f1_weighted": test["f1_weighted"],
                "test_auroc": test["auroc"],
                "test_n": test["n"],
                "train_images_per_s": metrics["train_images_per_s"],
                "wall_seconds": round(wall, 1),
                "split_unit": metrics["split_unit"],
                "split_counts": metrics["split_counts"],
                "run_dir": str(out),
            }
        )
        print(json.dumps(rows[-1], indent=1), flush=True)

    machine = describe_machine()
    results = Path(args.results)
    atomic_write_json(
        results / "train_allidb2.json", {"machine": machine, "data": args.data, "rows": rows}
    )
    lines = [
        "# Training on ALL-IDB2 (CPU)",
        "",
        markdown_machine(machine),
        "",
        f"Data: ALL-IDB2 ({args.data}); split by image (no subject ids), stratified 70/15/15, seed 0; "
        "no pretrained weights (no network); AdamW, cosine schedule, class weights, augmentation.",
        "",
        "| model | px | epochs (best) | params | test acc | weighted F1 | AUROC | train img/s | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['img_size']} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{r['parameters'] / 1e6:.1f} M | {r['test_accuracy']:.3f} | {r['test_f1_weighted']:.3f} | "
            f"{r['test_auroc']:.3f} | {r['train_images_per_s']:.1f} | {r['wall_seconds'] / 60:.1f} min |"
        )
    lines.append("")
    lines.append(
        f"Test split: {rows[0]['test_n'] if rows else 0} images. Figures from one seed; "
        "with 40 test images one error is 2.5 points."
    )
    atomic_write_text(results / "train_allidb2.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
