"""report.html: the count, then every counted cell's picture, for a person to check.

Nobody should sign a blast count without looking at the cells the model called
blasts. The report is one static page beside small JPEG pictures (``thumbs/``),
with no network access needed (works from a USB stick): the summary of the
count, then a grid of every unique cell sorted by its probability of the positive
class, with its class, probability, frame and slide position. Inline script
filters by class and certainty, lets the reviewer flip a cell's label, and
exports every cell's final label as a CSV that ``leukedge data import-corrections``
turns into a class-folder dataset for ``leukedge train --init``. Every string put
into the page is escaped.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukedge.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from leukedge.runtime.session import CountSession

REPORT_FILE = "report.html"
TRACKS_FILE = "tracks.jsonl"
THUMBS_DIR = "thumbs"
CSV_FIELDS = (
    "file",
    "label",
    "model_class",
    "p_positive",
    "corrected",
    "track_id",
    "frame",
    "frame_name",
    "slide_x",
    "slide_y",
)


def thumb_file(track_id: int) -> str:
    """A cell's picture, relative to the report."""
    return f"{THUMBS_DIR}/cell-{track_id:06d}.jpg"


def write_report(out_dir: Path, summary: dict[str, Any], session: CountSession) -> dict[str, Any]:
    """Write thumbs/, tracks.jsonl and report.html into ``out_dir``; returns what was written."""
    folder = out_dir / THUMBS_DIR
    if folder.is_symlink():
        raise OSError(f"{folder} is a link; leukedge writes the cell pictures only into a folder")
    folder.mkdir(exist_ok=True)
    cells = session.cells()
    pictures = 0
    for c in cells:
        view = session.views.get(c["track_id"])
        if view is not None:
            atomic_write_bytes(out_dir / thumb_file(c["track_id"]), view.jpeg, fsync=False)
            c["thumb"] = thumb_file(c["track_id"])
            pictures += 1
        else:
            c["thumb"] = None
    lines = "".join(json.dumps(c, separators=(",", ":")) + "\n" for c in cells)
    atomic_write_text(out_dir / TRACKS_FILE, lines)
    page = render(summary, cells, session.classes, session.positive)
    atomic_write_text(out_dir / REPORT_FILE, page)
    return {
        "report": REPORT_FILE,
        "tracks": TRACKS_FILE,
        "thumbs": f"{THUMBS_DIR}/",
        "thumbs_written": pictures,
    }


def remove_report(out_dir: Path, outputs: dict[str, Any]) -> None:
    """Remove what an earlier run's :func:`write_report` wrote (only its own files)."""
    for name in (REPORT_FILE, TRACKS_FILE):
        if outputs.get(name.split(".")[0]) == name:
            _unlink(out_dir / name)
    folder = out_dir / THUMBS_DIR
    if outputs.get("thumbs") == f"{THUMBS_DIR}/" and folder.is_dir() and not folder.is_symlink():
        for p in folder.glob("cell-*.jpg"):
            _unlink(p)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f} %"


def _summary_rows(summary: dict[str, Any], positive: str) -> list[tuple[str, str]]:
    u = summary.get("unique_cells") or {}
    br = u.get("blast_ratio") or {}
    lo, hi = br.get("ci95") or [None, None]
    rows = [
        (
            "status",
            f"{summary.get('status')}"
            + (f" ({summary['message']})" if summary.get("message") else ""),
        ),
        ("model", f"{(summary.get('model') or {}).get('path')}"),
        ("source", f"{(summary.get('source') or {}).get('source', '')}"),
        ("cells counted", f"{u.get('cells', 0)} (each once; target {u.get('target') or '-'})"),
        (f"{positive} (blasts)", f"{u.get('blasts', 0)}"),
        (
            "blast percentage",
            f"{_pct(br.get('ratio'))} (95 % CI {_pct(lo)} - {_pct(hi)}, Wilson)"
            if br.get("ratio") is not None
            else "-",
        ),
        ("uncertain", f"{u.get('uncertain', 0)} with P({positive}) in {u.get('uncertain_band')}"),
        ("edge cells", f"{u.get('edge_only', 0)} only ever cut by the frame edge (not counted)"),
        ("out of distribution", f"{u.get('out_of_distribution', 0)} cells"),
        (
            "frames",
            f"{(summary.get('frames') or {}).get('processed', 0)} processed, "
            f"{u.get('blurred_frames', 0)} too blurred to classify, "
            f"{(u.get('motion') or {}).get('fields', 0)} fields",
        ),
        (
            "detections",
            f"{(summary.get('cells') or {}).get('total', 0)} (a cell per frame it is in)",
        ),
        ("started", f"{summary.get('started')} - {summary.get('finished') or 'running'}"),
    ]
    if u.get("unconfirmed"):
        rows.insert(
            -4,
            (
                "unconfirmed",
                f"{u['unconfirmed']} seen whole fewer than {u.get('min_whole_sightings')} "
                "times (not counted)",
            ),
        )
    return rows


def render(
    summary: dict[str, Any], cells: list[dict[str, Any]], classes: list[str], positive: str
) -> str:
    """The page (pure: for the tests too)."""
    shift = summary.get("domain_shift") or {}
    warning = shift.get("warning")
    rows = "\n".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _summary_rows(summary, positive)
    )
    ordered = sorted(cells, key=lambda c: (-float(c.get("p_positive") or 0.0), c["track_id"]))
    options = "".join(f'<option value="{_e(c)}">{_e(c)}</option>' for c in classes)
    cards = "\n".join(_card(c, classes, positive) for c in ordered)
    warn = f'<p class="warn">{_e(warning)}</p>' if warning else ""
    return _PAGE.format(
        title=_e(f"leukedge count: {summary.get('started', '')}"),
        rows=rows,
        warn=warn,
        positive=_e(positive),
        options=options,
        n=len(ordered),
        cards=cards,
        fields=_e(json.dumps(list(CSV_FIELDS))),
    )


def _card(c: dict[str, Any], classes: list[str], positive: str) -> str:
    label = c.get("class") or ""
    flags = []
    if c.get("uncertain"):
        flags.append("uncertain")
    if c.get("edge_only"):
        flags.append("edge only")
    elif c.get("counted") is False:
        flags.append("not counted: seen whole once")
    if c.get("out_of_distribution"):
        flags.append("unlike training")
    select = "".join(
        f'<option value="{_e(k)}"{" selected" if k == label else ""}>{_e(k)}</option>'
        for k in classes
    )
    img = (
        f'<img src="{_e(c["thumb"])}" alt="cell {c["track_id"]}" loading="lazy">'
        if c.get("thumb")
        else '<div class="noimg">no picture</div>'
    )
    x, y = c.get("slide_xy") or [0, 0]
    attrs = {
        "data-id": c["track_id"],
        "data-class": label,
        "data-p": c.get("p_positive"),
        "data-uncertain": int(bool(c.get("uncertain"))),
        "data-edge": int(bool(c.get("edge_only"))),
        "data-file": c.get("thumb") or "",
        "data-frame": c.get("best_frame") if c.get("best_frame") is not None else "",
        "data-name": c.get("best_frame_name") or "",
        "data-x": x,
        "data-y": y,
    }
    attr_text = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    p = c.get("p_positive")
    return (
        f'<div class="cell{" pos" if label == positive else ""}" {attr_text}>{img}'
        f'<div class="meta">#{_e(c["track_id"])} <b>{_e(label)}</b> '
        f"P({_e(positive)}) {_e(f'{p:.3f}' if isinstance(p, float) else p)}<br>"
        f"frame {_e(c.get('best_frame'))} {_e(c.get('best_frame_name') or '')}<br>"
        f"at ({_e(x)}, {_e(y)}) field {_e(c.get('field'))}, seen {_e(c.get('sightings'))}x"
        f"{'<br><i>' + _e(', '.join(flags)) + '</i>' if flags else ''}</div>"
        f'<label>label <select class="label">{select}</select></label></div>'
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th {{ text-align: left; padding: 2px 1em 2px 0; }}
td {{ padding: 2px 0; }}
.warn {{ background: #fde2e1; border: 1px solid #c33; padding: .6em; font-weight: bold; }}
.bar {{ position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin-top: 1em; }}
.cell {{ border: 2px solid #9bb; border-radius: 4px; padding: 4px; font-size: 12px; }}
.cell.pos {{ border-color: #c33; }}
.cell.flipped {{ outline: 3px dashed #e90; }}
.cell img {{ width: 128px; height: 128px; display: block; margin: auto; image-rendering: auto; }}
.noimg {{ width: 128px; height: 128px; margin: auto; background: #eee; }}
.note {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1>Differential count</h1>
{warn}
<table>
{rows}
</table>
<p class="note">Research software, not a medical device: check every cell before using this count.
Cells are sorted by P({positive}); a cell's class is the mean over the frames it was seen in.</p>
<div class="bar">
<label>class <select id="fclass"><option value="">all</option>{options}</select></label>
<label>certainty <select id="funsure"><option value="">all</option>
<option value="1">uncertain only</option><option value="0">sure only</option></select></label>
<label><input type="checkbox" id="fedge" checked> edge cells</label>
<span id="shown"></span> of {n} cells;
<span id="flips">0</span> labels changed
<button id="export">export labels (CSV)</button>
</div>
<div class="grid" id="grid" data-fields="{fields}">
{cards}
</div>
<script>
(function () {{
  var fields = JSON.parse(document.getElementById("grid").dataset.fields || "[]");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".cell"));
  function filter() {{
    var k = document.getElementById("fclass").value;
    var u = document.getElementById("funsure").value;
    var e = document.getElementById("fedge").checked;
    var shown = 0;
    cards.forEach(function (c) {{
      var label = c.querySelector("select.label").value;
      var ok = (!k || label === k) && (!u || c.dataset.uncertain === u) &&
        (e || c.dataset.edge === "0");
      c.style.display = ok ? "" : "none";
      if (ok) shown++;
    }});
    document.getElementById("shown").textContent = shown;
  }}
  function flips() {{
    var n = 0;
    cards.forEach(function (c) {{
      var f = c.querySelector("select.label").value !== c.dataset.class;
      c.classList.toggle("flipped", f);
      if (f) n++;
    }});
    document.getElementById("flips").textContent = n;
  }}
  function q(v) {{
    v = String(v);
    return /[",\\n\\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }}
  function exportCsv() {{
    var rows = [fields.join(",")];
    cards.forEach(function (c) {{
      if (!c.dataset.file) return;
      var label = c.querySelector("select.label").value;
      var row = [c.dataset.file, label, c.dataset.class, c.dataset.p,
        label !== c.dataset.class ? 1 : 0, c.dataset.id, c.dataset.frame, c.dataset.name,
        c.dataset.x, c.dataset.y];
      rows.push(row.map(q).join(","));
    }});
    var blob = new Blob([rows.join("\\n") + "\\n"], {{type: "text/csv"}});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "corrections.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
  }}
  ["fclass", "funsure", "fedge"].forEach(function (id) {{
    document.getElementById(id).addEventListener("change", filter);
  }});
  cards.forEach(function (c) {{
    c.querySelector("select.label").addEventListener("change", function () {{ flips(); filter(); }});
  }});
  document.getElementById("export").addEventListener("click", exportCsv);
  filter();
}})();
</script>
</body></html>
"""
