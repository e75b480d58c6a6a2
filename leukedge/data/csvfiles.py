"""The small CSV files datasets come with (C-NMC's labels, subjects.csv), read strictly.

A labels file decides what a model learns and is tested on, so a row leukedge
cannot read for certain is an error naming the file, line and value, never a
silently skipped or guessed row. Spreadsheet habits are accepted: a UTF-8 byte
order mark, CRLF line ends, blank lines, spaces around values, empty trailing fields.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from leukedge.data.records import DatasetError

Row = tuple[int, dict[str, str]]  # (line number in the file, column -> stripped value)


def read_rows(path: str | Path, required: Sequence[str]) -> list[Row]:
    """Every data row of ``path`` with the columns of its header; DatasetError on anything odd."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {e.start} is not): save it as a UTF-8 CSV"
        ) from None
    if "\0" in text:
        raise DatasetError(f"{path} holds NUL bytes: it is not a CSV text file")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[Row] = []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank line
            if header is None:
                header = [f.strip() for f in fields]
                missing = [c for c in required if c not in header]
                if missing:
                    raise DatasetError(
                        f"{path}: line {reader.line_num}: the header lacks the column(s) "
                        f"{', '.join(missing)} (it has {', '.join(header)}; needed: "
                        f"{', '.join(required)})"
                    )
                continue
            rows.append((reader.line_num, _row(path, reader.line_num, header, fields)))
    except csv.Error as e:
        raise DatasetError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if header is None:
        raise DatasetError(f"{path} is empty: it needs a header with {', '.join(required)}")
    return rows


def _row(path: Path, line: int, header: list[str], fields: list[str]) -> dict[str, str]:
    if len(fields) < len(header):
        raise DatasetError(
            f"{path}: line {line} has {len(fields)} field(s) but the header has "
            f"{len(header)} ({', '.join(header)})"
        )
    if any(f.strip() for f in fields[len(header) :]):
        raise DatasetError(
            f"{path}: line {line} has {len(fields)} fields but the header has only "
            f"{len(header)} ({', '.join(header)})"
        )
    return {name: value.strip() for name, value in zip(header, fields)}  # noqa: B905
