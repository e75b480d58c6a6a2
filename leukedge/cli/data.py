"""`leukedge data check`, `leukedge data synth` and `leukedge data cells`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from leukedge.cli import params
from leukedge.cli.common import (
    console,
    data_app,
    friendly_errors,
    print_json,
)
from leukedge.spec import CROP_STYLES

LAYOUTS = ("auto", "cnmc", "allidb2", "folders", "synthetic")


@data_app.command("check")
@friendly_errors
def data_check(
    path: Path = typer.Argument(
        ..., help="Dataset folder (C-NMC, ALL-IDB2, class folders, synthetic)."
    ),
    layout: str = typer.Option(
        "auto",
        help="auto | cnmc | allidb2 | folders | synthetic",
        callback=params.one_of("--layout", LAYOUTS),
    ),
    subjects: Path | None = typer.Option(
        None,
        help="CSV with columns file,subject (class folders).",
        exists=True,
        dir_okay=False,
    ),
    decode: bool = typer.Option(True, help="Decode every image to find corrupt files."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """What is in a dataset: counts per class and subject, image formats, problems found.

    Example: leukedge data check ~/data/C-NMC_Leukemia
    """
    from leukedge.data.check import check_dataset
    from leukedge.data.layouts import load_dataset
    from leukedge.progress import RichReporter

    ds = load_dataset(path, layout, subjects)
    if decode and not as_json:
        with RichReporter(console) as rep:
            task = rep.task("decoding images", len(ds.records))
            report = check_dataset(ds, True, lambda i, n: rep.advance(task))
    else:
        report = check_dataset(ds, decode)
    if as_json:
        print_json(report)
        return
    console.print(
        f"[bold]{report['root']}[/]  layout [cyan]{report['layout']}[/]  "
        f"{report['images']} images, {report['usable_images']} usable"
    )
    table = Table(title="images per class")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("subjects", justify="right")
    for c in report["classes"]:
        table.add_row(c, str(report["class_counts"][c]), str(report["subjects_per_class"][c]))
    console.print(table)
    if report["images_per_subject"]:
        ips = report["images_per_subject"]
        console.print(
            f"{report['subjects']} subjects; images per subject min {ips['min']} "
            f"median {ips['median']} max {ips['max']}"
        )
    console.print(f"sizes: {report['image_sizes']}  pixels: {report['pixel_formats']}")
    for w in report["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}")
    for p in report["problems"][:20]:
        console.print(f"[red]problem:[/] {p['path']}: {p['problem']}")
    if len(report["problems"]) > 20:
        console.print(f"... and {len(report['problems']) - 20} more (use --json for all)")


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Path = typer.Argument(
        ..., help="Output folder (created; a previous synth output is replaced)."
    ),
    n: int = typer.Option(2000, "--n", min=2, max=1_000_000, help="Number of single-cell crops."),
    frames: int = typer.Option(
        20, min=0, max=100_000, help="Number of full smear frames with ground-truth boxes."
    ),
    seed: int = typer.Option(
        0, min=0, max=2**32 - 1, help="Random seed: the same seed gives identical files."
    ),
    cell_size: int = typer.Option(
        128, min=16, max=1024, help="Side of the single-cell crops in pixels."
    ),
) -> None:
    """Synthetic blood-smear data (cells as class folders with subjects, frames with boxes).

    For demos and tests only: never report synthetic accuracy as accuracy on real data.
    Example: leukedge data synth data/synth --n 2000 --frames 20
    """
    from leukedge.data.synth import synthesize
    from leukedge.progress import RichReporter

    with RichReporter(console) as rep:
        task = rep.task("synthesizing", n + frames)
        meta = synthesize(
            out,
            n=n,
            frames=frames,
            seed=seed,
            cell_size=cell_size,
            progress=lambda i, total: rep.advance(task),
        )
    console.print(f"wrote {meta['counts']} to {out} (cells/, frames/, synth.json)")


@data_app.command("cells")
@friendly_errors
def data_cells(
    frames: str = typer.Argument(
        ..., help="Frames: an image, a folder or glob of images, or a video file."
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (CELLS)."),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Run dir or .onnx: crop as it does and add its guess and shift score to the CSV.",
    ),
    crop_style: str = typer.Option(
        "context",
        help="Without --model: masked | context (how the crops show a cell).",
        callback=params.one_of("--crop-style", CROP_STYLES),
    ),
    cell_fraction: float = typer.Option(
        0.6,
        help="Without --model: cell diameter over crop side.",
        callback=params.number("--cell-fraction", 0.05, 1.0),
    ),
    cell_diameter_px: float | None = typer.Option(
        None,
        "--cell-diameter-px",
        help="White-cell diameter in frame pixels (default: measured).",
        callback=params.cell_diameter(),
    ),
    um_per_px: float | None = typer.Option(
        None,
        "--um-per-px",
        help="Microns per pixel of the camera.",
        callback=params.um_per_px(),
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
) -> None:
    """Cut every cell found in FRAMES into CELLS/unlabelled/ for labelling (then fine-tune).

    Sort the crops into CELLS/all/ and CELLS/hem/ (100-200 cells go a long way), then:
    leukedge train --init runs/r50 --data CELLS --out runs/r50-mylab
    Example: leukedge data cells slides/ --out my-cells --model runs/r50
    """
    from leukedge.data.harvest import harvest_cells
    from leukedge.progress import RichReporter
    from leukedge.runtime.cells import CellFinder
    from leukedge.spec import ModelSpec

    if cell_diameter_px is not None and um_per_px is not None:
        raise typer.BadParameter("give --cell-diameter-px or --um-per-px, not both")
    clf = None
    if model is not None:
        from leukedge.runtime.classifier import Classifier

        clf = Classifier.load(model, "ort", "cpu")
        spec = clf.spec
    else:
        spec = ModelSpec(arch="none", crop_style=crop_style, cell_fraction=cell_fraction)
    finder = CellFinder.from_spec(spec, cell_diameter_px, um_per_px)
    with RichReporter(console) as rep:
        task = rep.task("cutting cells", None)
        try:
            result = harvest_cells(
                frames, out, spec, finder, clf, max_frames, lambda i, n: rep.advance(task)
            )
        finally:
            if clf is not None:
                clf.close()
    console.print(
        f"{result['cells']} cells from {result['frames']} frames "
        f"({result['skipped_frames']} unreadable) in [bold]{result['unlabelled']}[/]; "
        f"list in {result['csv']}"
    )
    classes = " and ".join(f"{out}/{c}/" for c in spec.classes)
    console.print(
        f"next: move each crop into {classes}, then "
        f"leukedge train --init RUN --data {out} --out runs/NAME"
    )


@data_app.command("import-corrections")
@friendly_errors
def data_import_corrections(
    csv_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="CSV exported from a run's report.html."
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (new or empty)."),
    report: Path | None = typer.Option(
        None,
        "--report",
        exists=True,
        file_okay=False,
        help="The run folder holding report.html and thumbs/ (default: the CSV's folder).",
    ),
) -> None:
    """Turn a reviewed report.html's exported labels into class folders for fine-tuning.

    Each cell's picture is copied into OUT/<label>/; OUT/corrections.csv says which
    labels the reviewer changed. Then: leukedge train --init RUN --data OUT --out runs/NAME
    Example: leukedge data import-corrections ~/Downloads/corrections.csv --report
    leukedge-run/20260101-120000-ab12 --out my-cells
    """
    from leukedge.data.corrections import import_corrections

    result = import_corrections(csv_file, out, report)
    by_class = ", ".join(f"{c} {n}" for c, n in sorted(result["by_class"].items()))
    console.print(
        f"{result['cells']} cells ({by_class}; {result['corrected']} relabelled) in "
        f"[bold]{escape(str(out))}[/]"
    )
    console.print(f"next: leukedge train --init RUN --data {escape(str(out))} --out runs/NAME")
