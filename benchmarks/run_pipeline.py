"""End-to-end `leukedge run` speed on real microscope frames (ALL-IDB1): annotation and the live page.

    python benchmarks/run_pipeline.py --run benchmarks/work/allidb2-cnn \\
        [--data ../shared/data] [--precisions int8] [--batch 8] [--rounds 2] \\
        [--modes no-annotate,annotate,annotate-png,annotate+serve,annotate-no-budget]

``--run`` is a run dir with ``export/model.<precision>.onnx`` (``leukedge export RUN``),
an export folder, or one ``.onnx`` file. Every frame of ``DATA/all-idb1/im/*.jpg``
goes through the same ``run_pipeline`` the CLI calls, once per mode and round, the
modes interleaved (round 1: every mode, round 2: every mode...) so a busy machine
weighs on all of them alike; each run after a one-frame warm-up. Modes:

- ``no-annotate``: cells only (``--no-annotate``);
- ``annotate``: annotated JPEGs written by the writer thread (the default);
- ``annotate-png``: the same as PNGs (``--frame-format png``);
- ``annotate+serve``: annotated JPEGs and the live page (``--serve``), watched by
  a headless Chromium when one is here (its frame-to-screen latency is read from
  the page; Chromium runs on the same cores, as it would on a microscope PC);
- ``annotate-no-budget``: annotated JPEGs with ONNX Runtime and OpenCV left at their
  defaults (a thread per core each, spinning), to show what the thread budget buys.

Writes benchmarks/results/run_pipeline.json and .md with the machine described
(and live_page.png, the page during the serve run). CPU: the process's user+system
time over the run (all its threads), and Chromium's (its processes under this one).
The pipeline outputs go to --work (not committed).

The model is an ALL-IDB2 classifier; ALL-IDB1 frames come from the same study, so
the crops look like its training images. Throughput, not accuracy, is measured
here: the counts are reported to show the runs did the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leukedge.artifacts import export_dir_of, onnx_name, precision_of_file
from leukedge.io import atomic_write_json, atomic_write_text
from leukedge.machine import describe_machine, markdown_machine
from leukedge.runtime.cells import CellFinder
from leukedge.runtime.classifier import Classifier
from leukedge.runtime.detection_eval import load_xyc
from leukedge.runtime.live import LiveFeed
from leukedge.runtime.pipeline import run_pipeline
from leukedge.runtime.sources import open_source
from leukedge.runtime.stats import STAGES
from leukedge.runtime.threads import ThreadBudget, plan_threads
from leukedge.serve.bind import Bind
from leukedge.serve.server import LiveServer

REPO = Path(__file__).resolve().parents[1]


def models_for(run: Path, precisions: list[str]) -> dict[str, Path | None]:
    """``{precision: model.<precision>.onnx}`` of a run dir or export folder; one ``.onnx`` as is."""
    if run.suffix == ".onnx":
        return {precision_of_file(run): run}
    folder = export_dir_of(run)
    paths = {p: folder / onnx_name(p) for p in precisions}
    return {p: path if path.is_file() else None for p, path in paths.items()}


def cell_calls(out: Path, xyc_dir: Path, positive: str) -> dict[str, Any]:
    """How the cells of ALL-IDB1 frames were called, where the truth is known.

    Frames ``ImXXX_0`` come from healthy subjects: every cell there should be called
    HEM. In ``ImXXX_1`` frames only blasts are annotated (a centroid each): a cell whose
    box holds a blast centroid should be called ALL; other cells of those frames are
    not judged (they may be blasts left unannotated or normal cells).
    """
    by_frame: dict[str, list[dict[str, Any]]] = {}
    with open(out / "cells.jsonl") as f:
        for line in f:
            cell = json.loads(line)
            by_frame.setdefault(cell["name"], []).append(cell)
    healthy = healthy_pos = blasts = blasts_pos = 0
    for name, cells in by_frame.items():
        if Path(name).stem.endswith("_0"):
            healthy += len(cells)
            healthy_pos += sum(c["class"] == positive for c in cells)
            continue
        points = load_xyc(xyc_dir / (Path(name).stem + ".xyc"))
        for c in cells:
            x0, y0, x1, y1 = c["box"]
            if any(x0 <= x < x1 and y0 <= y < y1 for x, y in points):
                blasts += 1
                blasts_pos += c["class"] == positive
    return {
        "healthy_frame_cells": healthy,
        "healthy_frame_cells_called_all": healthy_pos,
        "blast_cells": blasts,
        "blast_cells_called_all": blasts_pos,
    }


MODES = ("no-annotate", "annotate", "annotate-png", "annotate+serve", "annotate-no-budget")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAT_STAGES = (*STAGES, "annotate", "annotated_end_to_end")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def descendants_cpu(name: str = "chromium") -> float:
    """CPU seconds of this process's descendants whose command is ``name`` (from /proc)."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    ticks: dict[int, float] = {}
    hz = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        pid = int(d.name)
        parent[pid] = int(rest[1])
        comm[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        ticks[pid] = (int(rest[11]) + int(rest[12])) / hz
    me = os.getpid()

    def mine(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            pid = parent.get(pid, 0)
            if pid == me:
                return True
            seen += 1
        return False

    return sum(t for pid, t in ticks.items() if name in comm.get(pid, "") and mine(pid))


class Viewer:
    """A headless Chromium showing the live page (None where Chromium or Playwright is absent)."""

    def __init__(self, url: str, screenshot: Path | None) -> None:
        from playwright.sync_api import sync_playwright

        self.screenshot = screenshot
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.goto(url)
        self.page.wait_for_function("window.leukedge && window.leukedge.states >= 1")
        self.cpu0 = descendants_cpu()

    @staticmethod
    def available() -> bool:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return False
        return Path(CHROMIUM).is_file()

    def finish(self) -> dict[str, Any]:
        cpu = descendants_cpu() - self.cpu0
        lat = self.page.evaluate("window.leukedge.latencies")
        frames = self.page.evaluate("window.leukedge.frames")
        if self.screenshot is not None:
            self.page.screenshot(path=str(self.screenshot))
        self.browser.close()
        self._pw.stop()
        cap = [x["capture_to_screen_ms"] for x in lat]
        pub = [x["publish_to_screen_ms"] for x in lat]
        return {
            "frames_shown": frames,
            "capture_to_screen_ms": _pcts(cap),
            "publish_to_screen_ms": _pcts(pub),
            "browser_cpu_s": round(cpu, 2),
        }


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None}
    arr = np.asarray(values, np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p90": round(float(np.percentile(arr, 90)), 1),
    }


def measure(
    model: Path, frames: str, out: Path, args: argparse.Namespace, mode: str, shot: Path | None
) -> dict[str, Any]:
    """One full pipeline run in ``mode`` after a one-frame warm-up; its speed, CPU and counts."""
    budget = plan_threads()
    if mode == "annotate-no-budget":  # ONNX Runtime and OpenCV as they come: a thread per core
        budget = ThreadBudget(budget.cores, 0, budget.cores, spinning=True)
    clf = Classifier.load(
        model, backend="ort", device="cpu", batch=args.batch, options=budget.open_options("cpu")
    )
    finder = CellFinder.from_spec(
        clf.spec, cell_diameter_px=args.cell_diameter_px, um_per_px=args.um_per_px
    )
    annotate = mode != "no-annotate"
    fmt = "png" if mode == "annotate-png" else "jpg"
    feed = server = viewer = None
    page: dict[str, Any] = {}
    with clf:
        run_pipeline(
            clf,
            open_source(frames, max_frames=1),
            out / "warmup",
            finder,
            annotate=False,
            threads=budget,
        )
        if mode == "annotate+serve":
            feed = LiveFeed(out)
            server = LiveServer(feed, Bind("127.0.0.1", 0), max_fps=None)
            url = server.start()
            viewer = Viewer(url, shot) if Viewer.available() else None
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        try:
            s = run_pipeline(
                clf,
                open_source(frames, max_frames=args.max_frames),
                out,
                finder,
                batch=args.batch,
                annotate=annotate,
                model_name=str(model),
                frame_format=fmt,
                live=feed,
                threads=budget,
            )
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
            if viewer is not None:
                time.sleep(0.5)  # the last frames reach the screen
                page = viewer.finish()
        finally:
            if server is not None:
                server.stop()
    processed = s["frames"]["processed"]
    return {
        "mode": mode,
        "model": str(model),
        "backend": s["backend"]["chosen"],
        "threads": budget.to_dict(),
        "status": s["status"],
        "frames": s["frames"],
        "cells": s["cells"]["total"],
        "all_count": s["all_count"],
        "blast_ratio": s["blast_ratio"]["ratio"],
        "frames_per_s": s["throughput"]["frames_per_s"],
        "cells_per_s": s["throughput"]["cells_per_s"],
        "mean_cells_per_batch": s["throughput"]["mean_cells_per_batch"],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_frame": round(1000 * cpu / processed, 1) if processed else None,
        "cores_busy": round(cpu / wall, 2) if wall > 0 else None,
        "annotated_frames": s["outputs"].get("annotated_frames"),
        "annotated_dropped": s["outputs"].get("annotated_dropped"),
        "latency_ms": s["latency_ms"],
        "page": page or None,
        "skipped_frames": s["skipped_frames"],
        "calls": cell_calls(out, Path(args.data) / "all-idb1" / "xyc", clf.spec.positive_class),
    }


def encode_costs(frame: Path, model: Path, reps: int = 15) -> dict[str, Any]:
    """One frame's drawing and encoding, alone on one thread: min and median ms of ``reps``."""
    from leukedge.runtime.annotate import count_lines, draw_cells, draw_count
    from leukedge.runtime.outputs import encode_frame

    img = cv2.imread(str(frame))
    spec = Classifier.load(model, backend="ort", device="cpu").spec
    cells = CellFinder.from_spec(spec).find(img)
    labels = ["all"] * len(cells)
    cv2.setNumThreads(1)

    def draw() -> np.ndarray:
        out = draw_cells(img, cells, labels, [0.9] * len(cells), positive="all")
        return draw_count(out, count_lines(100, 80, "ALL", 10.0))

    drawn = draw()
    jobs = {
        "draw": draw,
        "jpeg_q90": lambda: encode_frame(drawn, "jpg"),
        "png": lambda: encode_frame(drawn, "png"),
    }
    out: dict[str, Any] = {"frame": frame.name, "cells": len(cells)}
    for name, job in jobs.items():
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            job()
            times.append(1000 * (time.perf_counter() - t))
        out[name] = {"min_ms": round(min(times), 1), "median_ms": round(float(np.median(times)), 1)}
    out["jpeg_kb"] = round(len(encode_frame(drawn, "jpg") or b"") / 1024)
    out["png_kb"] = round(len(encode_frame(drawn, "png") or b"") / 1024)
    return out


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one mode: the round of median frames/s, with every round's frames/s listed."""
    ranked = sorted(runs, key=lambda r: r["frames_per_s"] or 0.0)
    mid = dict(ranked[(len(ranked) - 1) // 2])
    mid["frames_per_s_rounds"] = [r["frames_per_s"] for r in runs]
    mid["e2e_p50_ms_rounds"] = [r["latency_ms"]["end_to_end"]["p50_ms"] for r in runs]
    return mid


def _ms(r: dict[str, Any], stage: str) -> str:
    st = r["latency_ms"].get(stage) or {}
    if not st.get("n"):
        return "-"
    return f"{st['p50_ms']:.0f}/{st['p90_ms']:.0f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `leukedge run` on ALL-IDB1 frames: annotation and the live page",
        "",
        f"Model: `{report['run']}`; {report['frames']} frames ({report['frame_size']}) from "
        f"`{report['source']}`; batch {report['settings']['batch']}; cell size "
        f"{report['settings']['scale']}; ONNX Runtime on CPU; {report['settings']['rounds']} "
        "rounds, modes interleaved, the round of median frames/s shown (every round's frames/s "
        "in brackets).",
        "",
    ]
    for precision, modes in report["results"].items():
        base = (modes.get("no-annotate") or {}).get("frames_per_s")
        lines += [
            f"## {precision}",
            "",
            "| mode | frames/s | vs no-annotate | end_to_end p50/p90 ms | annotated frame p50/p90 ms "
            "| frame to screen p50/p90 ms | CPU ms/frame | cores busy | dropped |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, r in modes.items():
            rel = f"{100 * r['frames_per_s'] / base:.0f} %" if base else "-"
            rounds = ", ".join(f"{x:.1f}" for x in r["frames_per_s_rounds"])
            page = r.get("page") or {}
            screen = page.get("capture_to_screen_ms") or {}
            scr = f"{screen['p50']:.0f}/{screen['p90']:.0f}" if screen.get("p50") else "-"
            if page:
                scr += f" ({page['frames_shown']} shown)"
            lines.append(
                f"| {mode} | {r['frames_per_s']:.2f} ({rounds}) | {rel} | {_ms(r, 'end_to_end')} | "
                f"{_ms(r, 'annotated_end_to_end')} | {scr} | {r['cpu_ms_per_frame']} | "
                f"{r['cores_busy']} | {r['annotated_dropped'] if r['annotated_dropped'] is not None else '-'} |"
            )
        lines += [
            "",
            "Per stage, p50/p90 ms:",
            "",
            "| mode | " + " | ".join(LAT_STAGES) + " |",
            "|---|" + "---:|" * len(LAT_STAGES),
        ]
        for mode, r in modes.items():
            lines.append(f"| {mode} | " + " | ".join(_ms(r, s) for s in LAT_STAGES) + " |")
        served = modes.get("annotate+serve") or {}
        page = served.get("page") or {}
        if page:
            lines += [
                "",
                f"Live page (headless Chromium on the same machine): {page['frames_shown']} frames "
                f"shown; frame read to on screen p50/p90 "
                f"{page['capture_to_screen_ms']['p50']}/{page['capture_to_screen_ms']['p90']} ms, "
                f"published to on screen {page['publish_to_screen_ms']['p50']}/"
                f"{page['publish_to_screen_ms']['p90']} ms; Chromium used "
                f"{page['browser_cpu_s']} CPU s during the run.",
            ]
        lines += [
            "",
            "Cells called ALL where the truth is known (healthy-subject frames `ImXXX_0`: every "
            "cell is normal; blast cells: a detection whose box holds an annotated blast centroid):",
            "",
            "| mode | cells | ALL | healthy-frame cells called ALL | blast cells called ALL |",
            "|---|---:|---:|---:|---:|",
        ]
        for mode, r in modes.items():
            c = r["calls"]
            lines.append(
                f"| {mode} | {r['cells']} | {r['all_count']} | "
                f"{c['healthy_frame_cells_called_all']}/{c['healthy_frame_cells']} | "
                f"{c['blast_cells_called_all']}/{c['blast_cells']} |"
            )
        lines.append("")
    first = next(iter(next(iter(report["results"].values())).values()))
    enc = report.get("encode")
    if enc:
        lines += [
            f"One annotated frame ({enc['frame']}, {enc['cells']} cells) on one thread, alone, "
            f"min/median of 15: drawing {enc['draw']['min_ms']}/{enc['draw']['median_ms']} ms, "
            f"JPEG q90 {enc['jpeg_q90']['min_ms']}/{enc['jpeg_q90']['median_ms']} ms "
            f"({enc['jpeg_kb']} kB), PNG {enc['png']['min_ms']}/{enc['png']['median_ms']} ms "
            f"({enc['png_kb']} kB).",
            "",
        ]
    lines += [
        "capture, find and preprocess run in the capture thread per frame; infer is one "
        "ONNX Runtime call per batch of cells in the main thread; end_to_end runs from reading "
        "a frame to its cells being written and counted (queue waits included); annotate is "
        "drawing, encoding and writing one annotated frame in the writer thread, annotated "
        "frame (annotated_end_to_end) from reading a frame to its annotated frame written. "
        "frames/s is the whole run's wall clock. CPU ms/frame: the process's CPU time (every "
        "thread, the live page's server included) per frame; cores busy: CPU time / wall time. "
        f"Thread budget: {first['threads']}. A file source never drops annotated frames "
        "(dropped is 0 by rule); a live source would.",
        "",
        "## Machine",
        "",
        markdown_machine(report["machine"]),
        f"- Load average (1/5/15 min) when the benchmark started: {report['load_average']}, "
        f"when it ended: {report.get('load_average_end')} (2 cores, shared)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="Run dir, export folder or .onnx file.")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--precisions", default="int8")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--cell-diameter-px", type=float, default=None)
    ap.add_argument("--um-per-px", type=float, default=None)
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "run_pipeline"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    run = Path(args.run)
    frames_dir = Path(args.data) / "all-idb1" / "im"
    if not frames_dir.is_dir():
        raise SystemExit(f"no ALL-IDB1 frames at {frames_dir} (pass --data)")
    frames = str(frames_dir / "*.jpg")
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {MODES}")
    models = models_for(run, args.precisions.split(","))
    missing = [p for p, m in models.items() if m is None]
    if len(missing) == len(models):
        raise SystemExit(
            f"no model.{{{args.precisions}}}.onnx for {run}: run `leukedge export {run}`"
        )
    load = (
        " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").exists()
        else None
    )
    results: dict[str, dict[str, Any]] = {}
    out = Path(args.results)
    first = next(m for m in models.values() if m is not None)
    encode = encode_costs(sorted(frames_dir.glob("*.jpg"))[0], first)
    print(f"encode: {encode}", flush=True)
    for precision, model in models.items():
        if model is None:
            print(f"{precision}: no model.{precision}.onnx, skipped", flush=True)
            continue
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for k in range(args.rounds):
            for mode in modes:
                shot = out / "live_page.png" if k == args.rounds - 1 else None
                work = Path(args.work) / precision / mode.replace("+", "_")
                r = measure(model, frames, work, args, mode, shot)
                runs[mode].append(r)
                print(
                    f"{precision} round {k + 1} {mode}: {r['frames_per_s']} frames/s, "
                    f"e2e p50 {r['latency_ms']['end_to_end']['p50_ms']} ms, "
                    f"cpu {r['cpu_ms_per_frame']} ms/frame, page {r['page']}",
                    flush=True,
                )
        results[precision] = {m: combine(rs) for m, rs in runs.items()}

    scale = (
        f"{args.cell_diameter_px} px"
        if args.cell_diameter_px
        else f"{args.um_per_px} µm/px"
        if args.um_per_px
        else "measured per frame"
    )
    first_frame = sorted(frames_dir.glob("*.jpg"))[0]
    img = cv2.imread(str(first_frame))
    report = {
        "benchmark": "run_pipeline",
        "run": str(run),
        "source": frames,
        "frames": next(iter(next(iter(results.values())).values()))["frames"]["read"],
        "frame_size": f"{img.shape[1]}x{img.shape[0]}" if img is not None else None,
        "settings": {"batch": args.batch, "scale": scale, "rounds": args.rounds, "modes": modes},
        "skipped_precisions": missing,
        "results": results,
        "encode": encode,
        "load_average": load,
        "load_average_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").exists()
        else None,
        "machine": describe_machine(),
    }
    atomic_write_json(out / "run_pipeline.json", report)
    atomic_write_text(out / "run_pipeline.md", markdown(report))
    print(f"wrote {out / 'run_pipeline.json'} and .md", flush=True)


if __name__ == "__main__":
    main()
