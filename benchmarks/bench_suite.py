"""The full bench matrix on this machine: every model x every backend that runs here.

    python benchmarks/bench_suite.py                      # the three ALL-IDB2 runs
    python benchmarks/bench_suite.py --runs runs/a runs/b --data ~/data/all-idb2
    python benchmarks/bench_suite.py --backends ort-fp32,trt-fp32,trt-fp16,trt-int8 --no-export

For each run dir (default ``benchmarks/work/allidb2-{cnn,resnet50,vit-hybrid}``,
made by ``benchmarks/train_allidb2.py``): export it first when ``export/`` is
missing (or its export.json belongs to another checkpoint), then
``leukedge.bench.run_bench`` on the chosen split. Results go to
``benchmarks/results/<machine_slug>/``::

    <run name>/report.json, report.md, latency.png, parity.png
    README.md     one table over every model and backend, the machine, what was left out
    suite.json    the same rows as data, with the settings

A run that is not ready (training unfinished: no metrics.json and no export)
is listed as not benchmarked with the reason; the others still run. Results of
machines with different slugs never overwrite each other, so a Jetson's
results sit beside the CPU's and compare column for column.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

# PyTorch's idle OpenMP threads must sleep, not spin, in an interleaved measurement;
# the policy is read when torch loads, which exporting does before the bench.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leukedge.artifacts import export_record_path, is_run_dir, read_export_record  # noqa: E402
from leukedge.bench import run_bench  # noqa: E402
from leukedge.bench.markdown import summary_rows  # noqa: E402
from leukedge.io import atomic_write_json, atomic_write_text, sha256_file  # noqa: E402
from leukedge.machine import describe_machine, machine_slug, markdown_machine  # noqa: E402
from leukedge.progress import PrintReporter  # noqa: E402

MODELS = ("cnn", "resnet50", "vit-hybrid")
DEFAULT_RUNS = [ROOT / "benchmarks" / "work" / f"allidb2-{m}" for m in MODELS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, default=DEFAULT_RUNS, help="run dirs")
    p.add_argument("--data", type=Path, default=None, help="the runs' data folder if it moved")
    p.add_argument(
        "--split",
        default="test",
        help="train | val | test | all | parity (the export's parity set against PyTorch's "
        "logits recorded at export) | auto (default: test)",
    )
    p.add_argument("--backends", default=None, help="comma list (default: every built-in)")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30, help="least timed calls per batch size")
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--max-time", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<slug>")
    p.add_argument("--no-export", action="store_true", help="never export; use export/ as is")
    return p.parse_args(argv)


def readiness(run: Path, allow_export: bool) -> tuple[bool, str]:
    """(True, what will happen) or (False, why this run cannot be benchmarked now)."""
    if not is_run_dir(run):
        return False, f"{run} is not a run dir (no spec.json)"
    exported = export_record_path(run).is_file()
    if exported and (not allow_export or _export_current(run)):
        return True, "export/ reused"
    if not allow_export:
        return False, "no export/export.json and --no-export given"
    if not (run / "metrics.json").is_file():
        return False, "training has not finished (no metrics.json)"
    return True, "exported now"


def _export_current(run: Path) -> bool:
    """True when export.json was made from the checkpoint now in the run dir (or none is here)."""
    checkpoint = run / "checkpoint.pt"
    if not checkpoint.is_file():
        return True
    record = read_export_record(run)
    return record.get("checkpoint_sha256") == sha256_file(checkpoint)


def bench_one(run: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    ok, how = readiness(run, not args.no_export)
    if not ok:
        raise RuntimeError(how)
    if how == "exported now":
        from leukedge.export import export_run

        print(f"[bench_suite] exporting {run}", flush=True)
        export_run(run, data=args.data)
    print(f"[bench_suite] bench {run} -> {out}", flush=True)
    return run_bench(
        run,
        split=args.split,
        data=args.data,
        backends=args.backends,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
        warmup=args.warmup,
        iters=args.iters,
        min_time_s=args.min_time,
        max_time_s=args.max_time,
        threads=args.threads,
        out=out,
        reporter=PrintReporter(),
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme(
    reports: dict[str, dict[str, Any]],
    missing: dict[str, str],
    machine: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    """The combined table: one row per model and backend, then the machine and the gaps."""
    lines = [
        f"# leukedge bench results: {machine_slug(machine)}",
        "",
        f"Made {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by "
        f"`python benchmarks/bench_suite.py` (split `{args.split}`, batch sizes "
        f"{args.batch_sizes}, at least {args.iters} timed calls and {args.min_time} s per "
        f"figure, at most {args.max_time} s). Every backend is compared with its model's "
        "reference on the same preprocessed images and timed interleaved with the others.",
        "",
    ]
    head: list[str] | None = None
    for name, report in reports.items():
        for row in summary_rows(report):
            cells = {
                "model": f"[{name}]({name}/report.md)",
                "images": str(report["data"]["images"]),
            }
            cells.update(row)
            if head is None:
                head = list(cells)
                lines += [
                    "| " + " | ".join(_cell(h) for h in head) + " |",
                    "|" + "---|" * len(head),
                ]
            lines.append("| " + " | ".join(_cell(cells.get(h, "–")) for h in head) + " |")
    if not reports:
        lines.append("No model could be benchmarked (see below).")
    notes = sorted({n for r in reports.values() for n in r["notes"]})
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "## Machine", "", markdown_machine(machine), ""]
    skipped: dict[str, list[str]] = {}
    for r in reports.values():
        for s in r["skipped"]:
            names = skipped.setdefault(s["reason"], [])
            if s["name"] not in names:
                names.append(s["name"])
    if skipped or missing:
        lines += ["## Not measured", ""]
        lines += [f"- model {name}: {why}" for name, why in missing.items()]
        lines += [f"- {', '.join(names)}: {why}" for why, names in skipped.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = describe_machine()
    out_root = args.out or ROOT / "benchmarks" / "results" / machine_slug(machine)
    reports: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for run in args.runs:
        name = run.resolve().name
        try:
            reports[name] = bench_one(run, out_root / name, args)
        except Exception as e:  # one model failing must not lose the others' results
            missing[name] = f"{type(e).__name__}: {e}"
            print(f"[bench_suite] {name} not benchmarked: {missing[name]}", flush=True)
    out_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_root / "README.md", readme(reports, missing, machine, args))
    atomic_write_json(
        out_root / "suite.json",
        {
            "machine": machine,
            "settings": vars(args) | {"runs": [str(r) for r in args.runs], "out": str(out_root)},
            "rows": {name: summary_rows(r) for name, r in reports.items()},
            "budget_passed": {name: r["summary"]["budget_passed"] for name, r in reports.items()},
            "not_benchmarked": missing,
        },
    )
    print(f"[bench_suite] results in {out_root}", flush=True)
    return 0 if reports and not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
