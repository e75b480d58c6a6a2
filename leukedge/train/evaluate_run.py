"""`leukedge evaluate`: a run's best checkpoint on any split, or on another dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from leukedge.data.layouts import load_dataset
from leukedge.data.splits import SPLITS, Split, load_split
from leukedge.io import atomic_write_json
from leukedge.predictions import PREDICTIONS_FILE, write_predictions
from leukedge.progress import Reporter
from leukedge.rundir import RunDir, RunDirError
from leukedge.runtime.calibration import (
    UNCERTAIN_BAND,
    adjusted_ratio,
    expected_calibration_error,
    softmax_t,
    uncertain,
)
from leukedge.runtime.shift import ShiftModelError, summarise_flags, unavailable
from leukedge.runtime.stats import blast_ratio
from leukedge.spec import ModelSpec
from leukedge.train.evaluate import (
    Predictions,
    metrics_of,
    per_subject_accuracy,
    predict,
    prediction_table,
)
from leukedge.train.loop import Distributed, resolve_device
from leukedge.train.reliability import load_shift
from leukedge.validate import MAX_BATCH, batch_memory, choice, integer

EVAL_SPLITS = (*SPLITS, "all")


def reliability_of(
    run: RunDir, spec: ModelSpec, pred: Predictions, relpath: Callable[[str], str]
) -> dict[str, Any]:
    """Calibration, blast ratios and domain shift of ``pred``, with one row per image."""
    probs = softmax_t(pred.logits, spec.temperature)
    p_pos = probs[:, spec.positive_index]
    called = int((probs.argmax(axis=1) == spec.positive_index).sum())
    n = len(pred.labels)
    shift = load_shift(run)
    scores = None
    if shift is None:
        domain: dict[str, Any] = unavailable("the run has no shift.npz (retrain to fit one)")
    else:
        try:
            scores = shift.scores(pred.features, pred.stains)  # type: ignore[arg-type]
            domain = summarise_flags(n, int((scores > 1.0).sum()), scores)
        except ShiftModelError as e:
            domain = unavailable(str(e))
    unsure = uncertain(p_pos)
    rows = [
        {
            "file": relpath(r.path),
            "label": spec.classes[r.label],
            "class": spec.classes[int(probs[i].argmax())],
            "p_" + spec.positive_class: round(float(p_pos[i]), 5),
            "uncertain": bool(unsure[i]),
            "shift_score": None if scores is None else round(float(scores[i]), 4),
        }
        for i, r in enumerate(pred.records)
    ]
    return {
        "calibration": {
            "temperature": spec.temperature,
            "ece": expected_calibration_error(probs, pred.labels) if n else None,
            "uncertain": int(unsure.sum()),
            "uncertain_band": list(UNCERTAIN_BAND),
        },
        "blast_ratio": blast_ratio(called, n),
        "blast_ratio_adjusted": adjusted_ratio(called, n, spec.operating_point),
        "domain_shift": domain,
        "images": rows,
    }


def evaluate_run(
    run_path: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 2,
    out: str | Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Metrics (+ per-subject accuracy) of the run's best checkpoint; written as JSON, with
    the per-image probabilities beside it (``<out>.predictions.csv``; for the run's own
    test split also ``RUN/predictions.csv``, which ``leukedge compare`` reads).

    With ``data`` of another dataset whose files are not in the run's split, every
    image of it is evaluated (``split`` must then be ``all`` or is treated so, and
    the result says so).
    """
    reporter = reporter or Reporter()
    split = choice(split, "--split", EVAL_SPLITS)
    integer(batch_size, "--batch-size", 1, MAX_BATCH)
    integer(workers, "--workers", 0, 256)
    run = RunDir(run_path)
    run.require("spec.json", "checkpoint.pt")
    spec = run.spec()
    batch_memory(batch_size, spec.input_size, "--batch-size")
    notes: list[str] = []
    saved_split: Split | None
    if data is None:
        dataset, saved_split = run.dataset_and_split()
    else:
        dataset = load_dataset(data)
        if dataset.classes != spec.classes:
            raise RunDirError(
                f"classes of {data} {dataset.classes} differ from the model's {spec.classes}"
            )
        saved_split = load_split(run.split_path, dataset) if run.split_path.is_file() else None
        if saved_split is not None and not saved_split.assignment:
            saved_split = None
    if split == "all" or saved_split is None:
        if split != "all":
            notes.append(f"{dataset.root} is not the run's dataset: evaluating all its images")
        records = list(dataset.records)
        used = "all"
    else:
        records = saved_split.records(dataset, split)
        used = split
    if not records:
        raise RunDirError(f"split {used!r} of {dataset.root} has no images")
    torch_device = resolve_device(device, Distributed())
    from leukedge.train.models import load_run_model

    model = load_run_model(run).to(torch_device)
    task = reporter.task(f"evaluate {used}", len(records))
    pred = predict(
        model,
        records,
        spec,
        torch_device,
        batch_size,
        workers,
        progress=lambda n: reporter.advance(task, n),
        features=True,
    )
    reporter.finish(task)
    result: dict[str, Any] = {
        "run": str(run.path),
        "data": str(dataset.root),
        "layout": dataset.layout,
        "split": used,
        "notes": notes,
        "metrics": metrics_of(pred, spec),
        "per_subject": per_subject_accuracy(pred, spec.classes),
        "skipped_files": [{"path": p, "problem": why} for p, why in pred.errors],
        **reliability_of(run, spec, pred, dataset.relpath),
    }
    out = Path(out) if out else run.path / f"eval_{dataset.layout}_{used}.json"
    table = prediction_table(pred, spec, dataset)
    predictions = [out.with_suffix(".predictions.csv")]
    if used == "test" and data is None:  # the run's own test split: what compare reads
        predictions.append(run.path / PREDICTIONS_FILE)
    for path in predictions:
        write_predictions(path, table)
    result["predictions"] = [str(p) for p in predictions]
    atomic_write_json(out, result)
    result["written_to"] = str(out)
    return result
