"""leukedge compare: loading and aligning runs, the report, the CLI, predictions files, FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score
from typer.testing import CliRunner

from leukedge.cli import app
from leukedge.compare import CompareError, compare_runs
from leukedge.compare.cost import count_flops
from leukedge.compare.runs import align_runs, load_run
from leukedge.io import atomic_write_json
from leukedge.predictions import (
    PredictionsError,
    PredictionTable,
    read_predictions,
    write_predictions,
)
from leukedge.spec import ModelSpec


def _probs(labels: np.ndarray, skill: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = skill * (2 * labels - 1) + rng.normal(0, 1.0, labels.size)
    p1 = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p1, p1], axis=1)


def _fake_run(
    path: Path,
    files: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    subjects: list[str | None] | None = None,
    bench_ms: float | None = None,
) -> Path:
    """A run dir as far as compare reads it: spec.json, predictions.csv, maybe a bench report."""
    path.mkdir(parents=True)
    ModelSpec(arch="cnn", input_size=32).save(path / "spec.json")
    table = PredictionTable(
        files=files,
        subjects=subjects or [None] * len(files),
        labels=labels,
        probs=probs,
        classes=["hem", "all"],
    )
    write_predictions(path / "predictions.csv", table)
    if bench_ms is not None:
        row = {
            "precision": "fp32",
            "device": "cpu",
            "parity": {"agreement": 1.0},
            "latency": {
                "1": {"host_ms": {"p50": bench_ms, "p90": 1.5 * bench_ms}, "images_per_s": 900},
                "8": {"host_ms": {"p50": 4 * bench_ms, "p90": 5 * bench_ms}, "images_per_s": 2000},
            },
        }
        report = {
            "machine": {"cpu": "Test CPU", "cpu_cores": 2, "gpus": []},
            "data": {"split": "test"},
            "backends": {
                "torch": row,
                "ort-fp32": {
                    **row,
                    "latency": {
                        "1": {
                            "host_ms": {"p50": bench_ms / 2, "p90": bench_ms},
                            "images_per_s": 1800,
                        }
                    },
                },
            },
        }
        atomic_write_json(path / "bench" / "report.json", report)
    return path


@pytest.fixture()
def three_runs(tmp_path: Path) -> list[Path]:
    """A strong, a middling and a weak model on the same 160 cells of 16 subjects."""
    n = 160
    subjects = [f"P{i // 10}" for i in range(n)]
    labels = np.asarray([int(s[1:]) % 2 for s in subjects])
    files = [f"cells/{i:03d}.png" for i in range(n)]
    return [
        _fake_run(tmp_path / "strong", files, labels, _probs(labels, 3.0, 1), subjects, 2.0),
        _fake_run(tmp_path / "middle", files, labels, _probs(labels, 2.5, 2), subjects, 1.0),
        _fake_run(tmp_path / "weak", files, labels, _probs(labels, 0.3, 3), subjects),
    ]


def test_compare_report_matches_the_libraries_and_reads_as_results(
    three_runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    report = compare_runs(three_runs, out, n_resamples=500)
    for f in ("report.json", "report.md", "roc.png", "confusion.png", "pareto.png"):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "report.json").read_text())
    assert saved["format"] == "leukedge.compare" and saved["images"]["n"] == 160
    assert saved["resampling"]["unit"] == "subject" and saved["resampling"]["units"] == 16
    assert saved["correction"] == {"method": "holm", "alpha": 0.05, "pairs": 3}
    for run in three_runs:
        t = read_predictions(run / "predictions.csv")
        m = saved["metrics"][run.name]
        assert m["auroc"]["estimate"] == pytest.approx(roc_auc_score(t.labels, t.probs[:, 1]))
        assert m["f1_weighted"]["estimate"] == pytest.approx(
            f1_score(t.labels, t.probs.argmax(1), average="weighted")
        )
        for entry in m.values():
            lo, hi = entry["ci95"]
            assert lo <= entry["estimate"] <= hi
    pairs = {(p["a"], p["b"]): p for p in saved["pairs"]}
    assert pairs[("strong", "weak")]["significant"]
    assert pairs[("strong", "weak")]["f1_weighted"]["estimate"] > 0
    holm = sorted(p["mcnemar"]["p_holm"] for p in saved["pairs"])
    raw = sorted(p["mcnemar"]["p_value"] for p in saved["pairs"])
    assert holm[0] == pytest.approx(min(1.0, 3 * raw[0]))
    # cost and latency from the bench reports; the weak run has none
    assert saved["cost"]["strong"]["gflops"] == pytest.approx(0.030082048)
    assert {r["backend"] for r in saved["cost"]["middle"]["latency"]} == {"torch", "ort-fp32"}
    assert saved["cost"]["weak"]["latency"] == []
    front = {(p["model"], p["backend"]) for p in saved["pareto"] if p["on_front"]}
    assert ("middle", "ort-fp32") in front
    md = (out / "report.md").read_text()
    assert "**significant**" in md and "Holm" in md and "![ROC curves](roc.png)" in md
    assert "strong vs weak" in md and "no bench report for weak" in md
    assert report["out"] == str(out)


def test_runs_on_different_images_are_refused_unless_aligned(tmp_path: Path) -> None:
    labels = np.asarray([0, 1] * 30)
    files = [f"im{i}.jpg" for i in range(60)]
    a = _fake_run(tmp_path / "a", files, labels, _probs(labels, 2, 0))
    b = _fake_run(
        tmp_path / "b",
        files[10:] + ["other.jpg"],
        np.r_[labels[10:], 1],
        _probs(np.r_[labels[10:], 1], 2, 1),
    )
    with pytest.raises(
        CompareError, match=r"different images \(a: 60, b: 51; 50 in common\).*--align"
    ):
        compare_runs([a, b], tmp_path / "x")
    report = compare_runs([a, b], tmp_path / "y", align=True, n_resamples=200, plots=False)
    assert report["images"]["n"] == 50 and report["images"]["aligned"]
    assert any("only the 50 images common to all" in n for n in report["notes"])
    assert "only the 50 images" in (tmp_path / "y" / "report.md").read_text()


def test_same_file_with_another_label_is_not_the_same_dataset(tmp_path: Path) -> None:
    labels = np.asarray([0, 1] * 10)
    files = [f"im{i}.jpg" for i in range(20)]
    a = _fake_run(tmp_path / "a", files, labels, _probs(labels, 2, 0))
    b = _fake_run(tmp_path / "b", files, 1 - labels, _probs(labels, 2, 1))
    with pytest.raises(CompareError, match="different labels"):
        align_runs([load_run(a), load_run(b)])


def test_a_kfold_run_is_read_from_its_oof_csv(tmp_path: Path) -> None:
    labels = np.asarray([0, 1] * 20)
    files = [f"im{i}.jpg" for i in range(40)]
    single = _fake_run(tmp_path / "single", files, labels, _probs(labels, 2, 0))
    kf = tmp_path / "kf"
    kf.mkdir()
    atomic_write_json(kf / "folds.json", {"folds": 2, "positive_class": "all", "data_root": "/d"})
    with pytest.raises(CompareError, match="unfinished 2-fold run"):
        load_run(kf)
    oof = PredictionTable(files, [None] * 40, labels, _probs(labels, 1, 5), ["hem", "all"])
    oof.folds = np.asarray([0, 1] * 20)
    write_predictions(kf / "oof.csv", oof)
    run = load_run(kf)
    assert run.kind == "kfold" and run.model_dirs == [kf / "fold-0", kf / "fold-1"]
    report = compare_runs([single, kf], tmp_path / "c", n_resamples=200, plots=False)
    assert [r["kind"] for r in report["runs"]] == ["run", "kfold"]
    assert report["resampling"]["unit"] == "image"
    assert any("no subject ids" in n for n in report["notes"])


def test_a_run_without_predictions_says_how_to_get_them(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run.mkdir()
    ModelSpec(arch="cnn").save(run / "spec.json")
    with pytest.raises(CompareError, match="leukedge evaluate"):
        load_run(run)


def test_cli_compare_refuses_then_aligns(tmp_path: Path) -> None:
    labels = np.asarray([0, 1] * 20)
    files = [f"im{i}.jpg" for i in range(40)]
    a = _fake_run(tmp_path / "a", files, labels, _probs(labels, 2, 0))
    b = _fake_run(tmp_path / "b", files[:30], labels[:30], _probs(labels[:30], 2, 1))
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "--align" in res.output
    res = runner.invoke(
        app,
        ["compare", str(a), str(b), "--out", str(tmp_path / "o"), "--align", "--resamples", "200"],
    )
    assert res.exit_code == 0, res.output
    assert "paired tests" in res.output
    assert (tmp_path / "o" / "report.md").is_file()


def test_predictions_round_trip_and_malformed_files(tmp_path: Path) -> None:
    table = PredictionTable(
        ["a.png", "b.png"],
        ["S1", None],
        np.asarray([1, 0]),
        np.asarray([[0.25, 0.75], [0.9, 0.1]]),
        ["hem", "all"],
        folds=np.asarray([0, 1]),
    )
    write_predictions(tmp_path / "p.csv", table)
    back = read_predictions(tmp_path / "p.csv")
    assert back.files == table.files and back.subjects == table.subjects
    np.testing.assert_array_equal(back.labels, table.labels)
    np.testing.assert_allclose(back.probs, table.probs)
    np.testing.assert_array_equal(back.folds, table.folds)
    (tmp_path / "bad.csv").write_text("path,prob\nx,1\n")
    with pytest.raises(PredictionsError, match="not a leukedge predictions file"):
        read_predictions(tmp_path / "bad.csv")
    (tmp_path / "lab.csv").write_text("file,subject,label,prob_hem,prob_all\nx,,blast,0.1,0.9\n")
    with pytest.raises(PredictionsError, match="line 2"):
        read_predictions(tmp_path / "lab.csv")


def test_flops_of_the_cnn_are_the_hand_count() -> None:
    """Convolutions 2*Cin*Cout*9*H*W per block (each block halves H, W), plus the head."""
    convs = [(3, 32, 32), (32, 64, 16), (64, 128, 8), (128, 256, 4)]
    expected = sum(2 * ci * co * 9 * s * s for ci, co, s in convs) + 2 * 256 * 2
    flops, params = count_flops(ModelSpec(arch="cnn", input_size=32))
    assert flops == expected
    assert params is not None and params > 300_000


@pytest.mark.slow
def test_training_and_evaluate_write_the_test_predictions(
    trained_run: Path, tmp_path: Path
) -> None:
    import shutil

    from leukedge.train.evaluate_run import evaluate_run

    trained_run = Path(shutil.copytree(trained_run, tmp_path / "run"))  # the shared run stays as is
    metrics = json.loads((trained_run / "metrics.json").read_text())
    table = read_predictions(trained_run / "predictions.csv")
    assert len(table) == metrics["test"]["n"]
    accuracy = float((table.probs.argmax(1) == table.labels).mean())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])
    assert all(s for s in table.subjects) and not Path(table.files[0]).is_absolute()
    (trained_run / "predictions.csv").unlink()
    result = evaluate_run(trained_run, workers=0)
    again = read_predictions(trained_run / "predictions.csv")
    assert again.files == table.files
    np.testing.assert_allclose(again.probs, table.probs, atol=1e-5)
    assert Path(result["predictions"][0]).name == "eval_synthetic_test.predictions.csv"


def test_cli_compare_help() -> None:
    result = CliRunner().invoke(app, ["compare", "--help"])
    assert result.exit_code == 0 and "--align" in result.output


def test_findings_name_the_model_each_significant_test_favours() -> None:
    from leukedge.compare.markdown import significant_winners, tied_with

    def test(sig: bool, estimate: float) -> dict[str, object]:
        return {"significant": sig, "estimate": estimate}

    pair = {
        "a": "cnn",
        "b": "short",
        "significant": True,
        "mcnemar": {"significant": False, "b": 10, "c": 8},
        "f1_weighted": test(False, 0.013),
        "auroc": test(True, -0.012),  # A - B < 0: the short run has the higher AUROC
    }
    assert significant_winners(pair) == {"auroc": "short"}
    # cnn has the higher F1 but no test favours it: it is not ranked above short
    assert tied_with({"pairs": [pair]}, "cnn") == ["cnn", "short"]
    pair["mcnemar"] = {"significant": True, "b": 30, "c": 5}
    assert significant_winners(pair) == {"mcnemar": "cnn", "auroc": "short"}
    assert tied_with({"pairs": [pair]}, "cnn") == ["cnn", "short"]  # the tests disagree
    pair["auroc"] = test(False, -0.012)
    assert tied_with({"pairs": [pair]}, "cnn") == ["cnn"]
