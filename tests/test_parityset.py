"""The parity set: its stratification, its file, a changed file refused, torch drift reported,
and a device copy without PyTorch or data that matches the workstation digit for digit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from leukedge.artifacts import read_export_record, write_export_record
from leukedge.bench import register_backend, run_bench, unregister_backend
from leukedge.bench.backends import open_backend
from leukedge.bench.recorded import drift_notes, version_changes
from leukedge.cli import app
from leukedge.data.records import Record
from leukedge.export.parityset import stored_crop, stratified_order
from leukedge.io import sha256_file
from leukedge.machine import package_version
from leukedge.runtime.parityset import (
    REFERENCE_NAME,
    ParitySet,
    ParitySetError,
    input_digests,
    load_parity_set,
    pack_crops,
    read_parity_set,
    save_parity_set,
)
from leukedge.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
FAST = {"warmup": 0, "iters": 2, "min_time_s": 0.0, "max_time_s": 0.2}
ORT = ("ort-fp32", "ort-fp16", "ort-int8")

# A device without PyTorch: any import of torch, torchvision or timm fails.
NO_TORCH = textwrap.dedent(
    """
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm"):
                raise ImportError(f"{name} is not installed on this device")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


def device_copy(run: Path, dst: Path) -> Path:
    """What a lab copies to the Jetson: spec.json and export/, nothing else."""
    dst.mkdir(parents=True)
    shutil.copy2(run / "spec.json", dst / "spec.json")
    shutil.copytree(run / "export", dst / "export")
    return dst


def rewrite_set(run: Path, change: Any) -> ParitySet:
    """Change the run's set with ``change(ps)`` and record the new file in export.json."""
    ps = load_parity_set(run)
    change(ps)
    sha = save_parity_set(ps.path, ps)
    record = read_export_record(run)
    record["parity_set"]["sha256"] = sha
    write_export_record(run / "export", record)
    return ps


# --------------------------------------------------------------------------- stratification


def test_stratified_order_spreads_classes_then_subjects() -> None:
    hem = [Record(f"hem/{s}/{i}.png", 0, f"H{s}") for s in range(3) for i in range(20)]
    blast = [Record(f"all/{s}/{i}.png", 1, f"A{s}") for s in range(2) for i in range(10)]
    order = stratified_order(hem + blast, seed=0)
    assert sorted(r.path for r in order) == sorted(r.path for r in hem + blast)  # each once
    head = order[:10]
    assert [r.label for r in head].count(0) == [r.label for r in head].count(1) == 5
    assert {r.subject for r in head} == {"H0", "H1", "H2", "A0", "A1"}  # every subject early
    assert all(r.label == 0 for r in order[40:])  # the small class is used up first
    assert order == stratified_order(list(reversed(hem + blast)), seed=0)  # input order: no matter
    no_subjects = [Record(f"{c}/{i}.png", c, None) for c in (0, 1) for i in range(7)]
    labels = [r.label for r in stratified_order(no_subjects)[:6]]
    assert labels.count(0) == labels.count(1) == 3


def test_stored_crop_bounds_the_short_side_and_never_enlarges() -> None:
    big = np.zeros((300, 450, 3), np.uint8)
    assert stored_crop(big, 128).shape == (128, 192, 3)
    small = np.zeros((64, 80, 3), np.uint8)
    assert stored_crop(small, 128) is not None and stored_crop(small, 128).shape == (64, 80, 3)


# --------------------------------------------------------------------------- the file


def make_set(n: int = 5, classes: tuple[str, ...] = ("hem", "all")) -> ParitySet:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (40 + 3 * i, 60 - 2 * i, 3), dtype=np.uint8) for i in range(n)]
    packed, sizes = pack_crops(crops)
    return ParitySet(
        crops=packed,
        sizes=sizes,
        labels=np.arange(n, dtype=np.int64) % len(classes),
        subjects=[f"S{i}" if i % 2 else None for i in range(n)],
        names=[f"cells/c{i}.png" for i in range(n)],
        splits=["val" if i < 3 else "test" for i in range(n)],
        logits=rng.normal(size=(n, len(classes))).astype(np.float32),
        digests=input_digests(rng.normal(size=(n, 3, 4, 4)).astype(np.float32)),
        meta={"classes": list(classes), "input_size": 32, "side": 64, "versions": {"torch": "9"}},
    )


def test_round_trip_keeps_every_array(tmp_path: Path) -> None:
    ps = make_set()
    path = tmp_path / "parity_set.npz"
    sha = save_parity_set(path, ps)
    assert sha == sha256_file(path) and not list(tmp_path.glob("*.tmp"))
    back = read_parity_set(path, expected_sha256=sha)
    for name in ("crops", "sizes", "labels", "logits", "digests"):
        assert np.array_equal(getattr(back, name), getattr(ps, name)), name
    assert back.subjects == ps.subjects and back.names == ps.names and back.splits == ps.splits
    assert back.meta["versions"] == {"torch": "9"} and back.meta["format"] == "leukedge.parityset"
    for i in range(len(ps)):
        assert np.array_equal(back.crop(i), ps.crop(i)) and back.crop(i).shape[:2] == tuple(
            ps.sizes[i]
        )
    with np.load(path, allow_pickle=False) as data:  # no object arrays anywhere
        assert all(data[k].dtype != object for k in data.files)
    head = back.head(2)
    assert len(head) == 2 and head.names == ps.names[:2] and head.sha256 == sha
    spec = ModelSpec(arch="cnn", input_size=32)
    x = back.inputs(spec)
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.float32
    with pytest.raises(ParitySetError, match="classes"):
        back.check_spec(ModelSpec(arch="cnn", classes=["a", "b", "c"], positive_class="a"))
    bad = make_set()
    bad.logits[0, 0] = np.nan
    with pytest.raises(ParitySetError, match="finite"):
        save_parity_set(tmp_path / "bad.npz", bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ParitySetError, match="not a readable parity set"):
        read_parity_set(tmp_path / "junk.npz")


# --------------------------------------------------------------------------- drift, unit


def test_version_changes_name_torch_and_timm() -> None:
    here = package_version("torch")
    assert version_changes({"torch": here, "timm": package_version("timm")}) == {}
    changes = version_changes({"torch": "1.0.0", "timm": package_version("timm")})
    assert changes == {"torch": ["1.0.0", here]}
    info = {
        "recorded": {"versions": {"torch": "1.0.0", "timm": "0.9"}},
        "version_changes": changes,
        "torch_reproduces": {
            "max_abs_diff": 0.5,
            "verdict": {"status": "fail", "reasons": ["max |Δlogit| 0.5 > 0.001"]},
        },
        "preprocess_mismatches": 3,
        "images_used": 10,
    }
    notes = " ".join(drift_notes(info))
    assert "torch 1.0.0 at export" in notes and f"{here} here" in notes
    assert "does NOT reproduce" in notes and "3 of 10 crops" in notes


# --------------------------------------------------------------------------- the exported set


@pytest.mark.slow
def test_export_writes_a_stratified_set_pytorch_reproduces(exported_run: Path) -> None:
    from leukedge.rundir import RunDir
    from leukedge.train.models import load_run_model

    spec = ModelSpec.load(exported_run / "spec.json")
    entry = read_export_record(exported_run)["parity_set"]
    ps = load_parity_set(exported_run, spec)
    assert entry["sha256"] == sha256_file(exported_run / "export" / "parity_set.npz")
    assert entry["versions"]["torch"] == package_version("torch")
    assert entry["versions"]["timm"] == package_version("timm")
    assert entry["size_bytes"] < 2_000_000 and entry["images"] == len(ps)
    files = json.loads((exported_run / "split.json").read_text())["files"]
    by_name = {f["path"]: f for f in files}
    held_out = [f for f in files if f["split"] in ("val", "test")]
    assert len(ps) == min(256, len(held_out))
    for name, split, subject, label in zip(
        ps.names, ps.splits, ps.subjects, ps.labels, strict=True
    ):
        assert by_name[name]["split"] == split and by_name[name]["subject"] == subject
        assert spec.classes[label] == by_name[name]["label"]
    assert set(ps.splits) == {"val", "test"}
    head = ps.labels[:20]
    assert abs(int((head == 0).sum()) - int((head == 1).sum())) <= 1  # balanced prefix
    # The crops are stored at least at the input size (or as read when smaller).
    assert min(ps.sizes.min(axis=1)) >= min(spec.input_size, 64)
    # The recorded logits are the model's on exactly these crops through preprocess.
    x = ps.inputs(spec)
    assert ps.preprocess_mismatches(x) == 0
    from leukedge.export.parity import torch_logits

    assert np.array_equal(torch_logits(load_run_model(RunDir(exported_run)), x), ps.logits)
    assert entry["parity"]["fp32"]["agreement"] == 1.0 and set(entry["parity"]) == {
        "fp32",
        "fp16",
        "int8",
    }


@pytest.mark.slow
def test_export_without_data_keeps_the_set_of_the_same_checkpoint(
    exported_run: Path, tmp_path: Path
) -> None:
    from leukedge.export import export_run

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bench"))
    before = read_export_record(run)["parity_set"]
    record = export_run(run, precisions=("fp16",), data=tmp_path / "absent")
    assert record["parity_set"]["sha256"] == before["sha256"]
    assert any("kept from the earlier export" in w for w in record["warnings"])
    record = export_run(run, precisions=("fp16",), data=tmp_path / "absent", parity_images=0)
    assert "parity_set" not in record and not (run / "export" / "parity_set.npz").exists()


# --------------------------------------------------------------------------- a changed set


@pytest.mark.slow
def test_a_changed_set_is_refused_with_a_clear_message(exported_run: Path, tmp_path: Path) -> None:
    device = device_copy(exported_run, tmp_path / "device")
    path = device / "export" / "parity_set.npz"
    ps = read_parity_set(path)
    ps.crops[0, 0, 0, 0] ^= 1  # one pixel of one crop: a valid file, not the recorded one
    save_parity_set(path, ps)
    with pytest.raises(ParitySetError, match="changed or replaced after export"):
        load_parity_set(device)
    runner = CliRunner()
    for args in (["bench", str(device), "--split", "parity"], ["check", str(device)]):
        result = runner.invoke(app, args)
        out = " ".join(result.output.split())
        assert result.exit_code == 1 and "changed or replaced after export" in out, out
        assert "Copy export/ again" in out
    record = read_export_record(device)
    del record["parity_set"]
    write_export_record(device / "export", record)
    with pytest.raises(ParitySetError, match="lists no parity set"):
        load_parity_set(device)


# --------------------------------------------------------------------------- torch drift


@pytest.mark.slow
def test_torch_drift_is_reported_not_hidden(exported_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bench"))
    here = package_version("torch")

    def older_torch(ps: ParitySet) -> None:
        ps.meta["versions"]["torch"] = "1.0.0"

    rewrite_set(run, older_torch)
    kw = {"backends": "torch,ort-fp32", "batch_sizes": (1,), "limit": 16, **FAST}
    r = run_bench(run, split="parity", out=tmp_path / "a", **kw)
    info = r["parity_set"]
    assert r["reference"]["backend"] == REFERENCE_NAME and info["role"] == "reference"
    assert info["version_changes"] == {"torch": ["1.0.0", here]}
    assert info["torch_reproduces"]["verdict"]["status"] == "pass"
    assert r["backends"]["torch"]["budget"]["status"] == "pass"
    notes = " ".join(r["notes"])
    assert f"torch 1.0.0 at export, {here} here" in notes and "still reproduces" in notes
    assert "torch: 1.0.0 → " in (tmp_path / "a" / "report.md").read_text()

    def moved(ps: ParitySet) -> None:
        ps.logits[:, 0] += 0.5

    rewrite_set(run, moved)
    r = run_bench(run, split="parity", out=tmp_path / "b", **kw)
    assert r["backends"]["torch"]["budget"]["status"] == "fail"
    assert "torch" in r["summary"]["failed"]
    assert any("does NOT reproduce" in n for n in r["notes"])
    # On the test split PyTorch is the reference; the recorded set is still checked.
    r = run_bench(run, out=tmp_path / "c", **kw)
    assert r["data"]["split"] == "test" and r["reference"]["backend"] == "torch"
    assert r["parity_set"]["role"] == "reproduction check"
    assert r["parity_set"]["torch_reproduces"]["verdict"]["status"] == "fail"
    assert any("does NOT reproduce" in n for n in r["notes"])


# --------------------------------------------------------------------------- the device


@pytest.mark.slow
def test_device_copy_without_torch_matches_the_workstation(
    exported_run: Path, tmp_path: Path
) -> None:
    """spec.json + export/ in a fresh folder, torch unimportable: the reference is PyTorch's
    recorded logits, and every ORT row equals the workstation's figures to the last digit."""
    workstation = run_bench(
        exported_run, split="parity", backends=",".join(ORT), batch_sizes=(1,),
        out=tmp_path / "ws", **FAST,
    )  # fmt: skip
    device = device_copy(exported_run, tmp_path / "jetson" / "cnn")
    out = tmp_path / "device"
    code = NO_TORCH + textwrap.dedent(
        f"""
        import json
        from leukedge.bench import run_bench
        from leukedge.bench.check import check_run
        r = run_bench({str(device)!r}, batch_sizes=(1,), out={str(out / "bench")!r},
                      warmup=0, iters=2, min_time_s=0.0, max_time_s=0.2)
        c = check_run({str(device)!r})
        json.dump(c, open({str(out / "check.json")!r}, "w"))
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    report = json.loads((out / "bench" / "report.json").read_text())
    assert report["data"]["split"] == "parity"
    assert report["reference"]["backend"] == REFERENCE_NAME
    ref = report["backends"][REFERENCE_NAME]
    assert ref["is_reference"] and ref["kind"] == "parity-only" and ref["precision"] == "fp32"
    assert {s["name"]: s["stage"] for s in report["skipped"]}["torch"] == "open"
    assert any("PyTorch is not installed" in n for n in report["notes"])
    recorded = read_export_record(exported_run)["parity_set"]["parity"]
    for name in ORT:
        mine, theirs = report["backends"][name], workstation["backends"][name]
        assert mine["parity"] == theirs["parity"], name  # to the last digit
        assert mine["metrics"] == theirs["metrics"] and mine["delta"] == theirs["delta"]
        at_export = recorded[name.split("-")[1]]
        assert {k: mine["parity"][k] for k in at_export} == at_export, name
    check = json.loads((out / "check.json").read_text())
    lines = {line["name"]: line for line in check["backends"]}
    assert lines["torch"]["status"] == "unavailable"
    assert lines["ort-fp32"]["status"] == "pass" and lines["ort-fp32"]["same_as_export"]
    assert lines["ort-fp32"]["parity"] == {
        k: v for k, v in report["backends"]["ort-fp32"]["parity"].items() if k in at_export
    }
    assert check["passed"] == (not [n for n, v in lines.items() if v["status"] == "fail"])


class Swapped:
    """ONNX Runtime fp32 with the two classes swapped: a broken install."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.spec = inner, "swapped", inner.spec
        self.precision, self.device, self.max_batch = "fp32", inner.device, inner.max_batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.infer(batch)[:, ::-1].copy()

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_check_prints_a_line_per_backend_and_exits_1_on_a_failure(
    exported_run: Path, tmp_path: Path
) -> None:
    device = device_copy(exported_run, tmp_path / "device")
    register_backend("swapped", lambda ctx: Swapped(open_backend("ort-fp32", ctx)))
    try:
        runner = CliRunner()
        ok = runner.invoke(app, ["check", str(device), "--backends", "ort-fp32,trt-fp16"])
        assert ok.exit_code == 0, ok.output
        out = " ".join(ok.output.split())
        assert "PASS ort-fp32" in out and "agreement 1.0000" in out
        assert "skip trt-fp16" in out  # not available here: listed, not failed
        bad = runner.invoke(app, ["check", str(device), "--backends", "ort-fp32,swapped"])
        assert bad.exit_code == 1, bad.output
        assert "FAIL swapped" in " ".join(bad.output.split())
        as_json = runner.invoke(app, ["check", str(device), "--backends", "swapped", "--json"])
        result = json.loads(as_json.output)
        assert as_json.exit_code == 1 and result["failed"] == ["swapped"]
        assert result["reference"] == REFERENCE_NAME and result["parity_set"]["images"] > 0
    finally:
        unregister_backend("swapped")
