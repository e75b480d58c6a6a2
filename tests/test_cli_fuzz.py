"""Every command x a table of bad values: exit 1 or 2, one message, no traceback, nothing lost.

The commands run in-process (typer's CliRunner) from an empty working folder; after
each, every file outside the given --out must be as it was, and nothing half-written
may be left under --out. A few usage errors run in a subprocess to show that the
error path never imports torch (seconds and hundreds of MB on a Jetson).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from badinputs import cell_image, class_folders, fake_run, tiny_onnx, write_png
from typer.testing import CliRunner

from leukedge.cli import app

# {data} a dataset, {run} a run dir with a corrupt checkpoint, {model} a valid ONNX,
# {noise} random bytes named .onnx, {frames} images, {file} a plain file, {missing}
# a path that does not exist, {out} a fresh output path for the case.
CASES: list[tuple[str, ...]] = [
    ("data", "check", "{missing}"),
    ("data", "check", "{file}"),
    ("data", "check", "{data}", "--layout", "bogus"),
    ("data", "check", "{data}", "--subjects", "{missing}"),
    ("data", "synth", "{out}", "--n", "-5"),
    ("data", "synth", "{out}", "--frames", "-1"),
    ("data", "synth", "{out}", "--seed", "-1"),
    ("data", "synth", "{out}", "--cell-size", "0"),
    ("data", "synth", "{out}", "--cell-size", "1000000"),
    ("data", "synth", "{file}", "--n", "4"),
    ("data", "synth", "{data}", "--n", "4"),
    *(
        ("train", "--data", "{data}", "--out", "{out}", *bad)
        for bad in (
            ("--batch-size", "0"),
            ("--batch-size", "-4"),
            ("--batch-size", "100000"),
            ("--epochs", "0"),
            ("--lr", "-1"),
            ("--lr", "nan"),
            ("--weight-decay", "inf"),
            ("--img-size", "8"),
            ("--img-size", "99999"),
            ("--device", "foo"),
            ("--optimizer", "sgd"),
            ("--split", "bogus"),
            ("--seed", "-1"),
            ("--workers", "-1"),
            ("--patience", "0"),
            ("--layout", "bogus"),
            ("--crop-style", "bogus"),
            ("--pretrained", "{missing}"),
            ("--model", "a b"),
            ("--resume",),
        )
    ),
    *(
        ("train", "--data", "{data}", "--out", "{out}", *bad)
        for bad in (
            ("--stain-norm", "bogus"),
            ("--freeze-backbone",),
            ("--init", "{missing}"),
            ("--init", "{data}"),
        )
    ),
    ("data", "cells", "{missing}", "--out", "{out}"),
    ("data", "import-corrections", "{missing}", "--out", "{out}"),
    ("data", "import-corrections", "{file}", "--out", "{out}"),
    ("data", "import-corrections", "{file}", "--out", "{out}", "--report", "{missing}"),
    ("data", "cells", "{frames}", "--out", "{out}", "--crop-style", "bogus"),
    ("data", "cells", "{frames}", "--out", "{out}", "--cell-fraction", "0"),
    ("data", "cells", "{frames}", "--out", "{out}", "--cell-diameter-px", "nan"),
    ("data", "cells", "{frames}", "--out", "{out}", "--model", "{noise}"),
    ("data", "cells", "{frames}", "--out", "{out}", "--model", "{missing}"),
    ("train", "--data", "{missing}", "--out", "{out}"),
    ("train", "--data", "{file}", "--out", "{out}"),
    ("train", "--data", "{data}", "--out", "{file}"),
    ("train", "--data", "{data}", "--out", "{data}"),
    ("evaluate", "{run}", "--split", "bogus"),
    ("evaluate", "{run}", "--batch-size", "0"),
    ("evaluate", "{run}", "--batch-size", "-4"),
    ("evaluate", "{run}", "--device", "foo"),
    ("evaluate", "{missing}"),
    ("evaluate", "{data}"),
    ("export", "{run}", "--calib-method", "bogus"),
    ("export", "{run}", "--precision", "fp8"),
    ("export", "{run}", "--opset", "99"),
    ("export", "{run}", "--calib-size", "0"),
    ("export", "{missing}"),
    ("build-engine", "{run}", "--precision", "fp8"),
    ("build-engine", "{run}", "--max-batch", "0"),
    ("build-engine", "{run}", "--dla-core", "-1"),
    ("build-engine", "{missing}", "--out", "{out}"),
    *(
        ("run", "{model}", "--source", "{frames}", "--out", "{out}", *bad)
        for bad in (
            ("--device", "foo"),
            ("--um-per-px", "inf"),
            ("--um-per-px", "-1"),
            ("--cell-diameter-px", "0"),
            ("--cell-diameter-px", "nan"),
            ("--cell-diameter-px", "1e9"),
            ("--cell-diameter-px", "60", "--um-per-px", "0.2"),
            ("--batch", "0"),
            ("--max-frames", "0"),
            ("--backend", "bogus"),
            ("--finder-stain", "bogus"),
            ("--count", "0"),
            ("--count", "-3"),
            ("--count", "many"),
        )
    ),
    ("run", "{model}", "--source", "{missing}", "--out", "{out}"),
    ("run", "{model}", "--source", "camera:x", "--out", "{out}"),
    ("run", "{noise}", "--source", "{frames}", "--out", "{out}"),
    ("run", "{missing}", "--source", "{frames}", "--out", "{out}"),
    ("run", "{data}", "--source", "{frames}", "--out", "{out}"),
    *(
        ("bench", "{run}", "--out", "{out}", *bad)
        for bad in (
            ("--split", "bogus"),
            ("--batch-sizes", "0,x"),
            ("--warmup", "-1"),
            ("--iters", "0"),
            ("--max-time", "nan"),
            ("--fp16-min-agreement", "2"),
            ("--torch-device", "foo"),
            ("--backends", "ort-fp64"),
        )
    ),
    ("bench", "{missing}", "--out", "{out}"),
    ("demo", "--out", "{out}", "--n", "0"),
    ("demo", "--out", "{out}", "--epochs", "0"),
    ("demo", "--out", "{out}", "--frames", "-1"),
    ("demo", "--out", "{out}", "--seed", "-1"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    data = class_folders(root / "data")
    (root / "file.txt").write_text("a plain file")
    (root / "noise.onnx").write_bytes(os.urandom(400))
    for i in range(2):
        write_png(root / "frames" / f"f{i}.png", cell_image(i, 64))
    return {
        "root": root,
        "data": data,
        "run": fake_run(root / "run", data, os.urandom(300)),
        "model": tiny_onnx(root / "model.fp32.onnx"),
        "noise": root / "noise.onnx",
        "frames": root / "frames",
        "file": root / "file.txt",
        "missing": root / "missing",
    }


def _snapshot(root: Path, skip: Path) -> dict[str, Any]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        out[str(p.relative_to(root))] = p.stat().st_size if p.is_file() else "dir"
    return out


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c) for c in CASES])
def test_bad_values_end_cleanly(
    case: tuple[str, ...], world: dict[str, Path], tmp_path: Path, monkeypatch: Any
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # defaults like leukedge-run/ and demo-out/ would land here
    out = world["root"] / f"out-{abs(hash(case))}"
    names = {k: str(v) for k, v in world.items()} | {"out": str(out)}
    args = [a.format(**names) for a in case]
    before = _snapshot(world["root"], out)
    result = CliRunner().invoke(app, args)
    text = result.output
    assert result.exit_code in (1, 2), f"{args}: exit {result.exit_code}\n{text}"
    assert "Traceback" not in text, text
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    assert _snapshot(world["root"], out) == before, f"{args} wrote outside --out"
    assert not any(cwd.iterdir()), f"{args} wrote into the working folder"
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")] if out.exists() else []
    assert not leftovers, f"{args} left partial files {leftovers}"


NO_TORCH_SCRIPT = """
import json, sys
from leukedge.cli import app
codes = []
for args in json.loads(sys.argv[1]):
    try:
        app(args, prog_name="leukedge")
    except SystemExit as e:
        codes.append([e.code, "torch" in sys.modules])
print(json.dumps(codes))
"""


def test_usage_errors_do_not_import_torch(world: dict[str, Path], tmp_path: Path) -> None:
    data, out = str(world["data"]), str(tmp_path / "out")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    calls = [
        ["train", "--data", data, "--out", out, "--batch-size", "0"],
        ["train", "--data", data, "--out", out, "--lr", "-1"],
        ["train", "--data", data, "--out", str(foreign)],
        ["train", "--data", str(world["missing"]), "--out", out],
        ["evaluate", str(world["run"]), "--split", "bogus"],
        ["run", str(world["model"]), "--source", str(world["frames"]), "--device", "foo"],
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [[2, False]] * len(calls), (codes, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
