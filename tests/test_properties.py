"""Property tests: readers of untrusted files end in a value or in their own error, nothing else."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from badinputs import class_folders, spec_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leukedge.data.records import DatasetError
from leukedge.spec import ModelSpec, SpecError

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = list(spec_dict())


@st.composite
def spec_like(draw: Any) -> dict[str, Any]:
    """A valid spec with some fields replaced or removed, and some unknown fields added."""
    d = spec_dict()
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if draw(st.booleans()):
            d[name] = draw(json_values)
        else:
            d.pop(name)
    d.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return d


def _valid(spec: ModelSpec) -> None:
    """A spec that loaded is usable: finite numbers, and strict JSON that reads back the same.

    (Unknown fields are kept as they came, but written as JSON can hold them: NaN as null.)
    """
    from leukedge.io import json_safe

    assert all(math.isfinite(v) for v in (*spec.mean, *spec.std, spec.cell_fraction))
    text = spec.to_json()
    again = ModelSpec.from_json(json.dumps(json.loads(text, parse_constant=_fail)))
    assert again.to_dict() == json_safe(spec.to_dict())


def _fail(name: str) -> None:
    raise AssertionError(f"{name} written to JSON")


@FAST
@given(st.one_of(spec_like(), st.dictionaries(st.sampled_from(FIELDS), json_values)))
def test_spec_from_any_dict_is_a_valid_spec_or_a_spec_error(data: dict[str, Any]) -> None:
    try:
        spec = ModelSpec.from_dict(data)
    except SpecError:
        return
    _valid(spec)


@FAST
@given(st.one_of(st.text(max_size=200), spec_like().map(json.dumps), json_values.map(json.dumps)))
def test_spec_from_any_text_is_a_valid_spec_or_a_spec_error(text: str) -> None:
    try:
        spec = ModelSpec.from_json(text)
    except SpecError:
        return
    _valid(spec)


# ------------------------------------------------------------------ CSV and split readers

cells = st.sampled_from(
    ["0", "1", "2", " 1 ", "", "1.bmp", "../x.bmp", "/etc/passwd", "UID_3_1_1_all.bmp", "a,b", '"']
)
csv_lines = st.lists(st.lists(cells, max_size=4).map(",".join), max_size=5)
headers = st.sampled_from(
    ["Patient_ID,new_names,labels", "\ufeffPatient_ID,new_names,labels", "file,subject", "x", ""]
)
csv_texts = st.one_of(
    st.text(max_size=120),
    st.tuples(headers, csv_lines, st.sampled_from(["\n", "\r\n"])).map(
        lambda t: t[2].join([t[0], *t[1]])
    ),
)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


@FAST
@given(csv_texts)
def test_labels_csv_of_any_text_gives_records_or_a_dataset_error(text: str) -> None:
    from leukedge.data.layouts import read_prelim_labels

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        img_dir = root / "imgs"
        img_dir.mkdir()
        (img_dir / "1.bmp").write_bytes(b"BM")
        try:
            records, problems = read_prelim_labels(
                _write(root, "l.csv", text), img_dir, ["hem", "all"]
            )
        except DatasetError:
            return
        for r in records:
            assert Path(r.path).resolve().parent == img_dir.resolve() and r.label in (0, 1)


@FAST
@given(csv_texts)
def test_subjects_csv_of_any_text_gives_subjects_or_a_dataset_error(text: str) -> None:
    from leukedge.data.layouts import read_subjects_csv

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        try:
            subjects = read_subjects_csv(_write(Path(tmp), "s.csv", text), root)
        except DatasetError:
            return
        for path, subject in subjects.items():
            assert root.resolve() in Path(path).parents and subject


_DATA = class_folders(Path(tempfile.mkdtemp(prefix="leukedge-props-")) / "d", per_class=3)
_SPLIT: dict[str, Any] = {}


def _dataset_and_split() -> tuple[Any, dict[str, Any]]:
    from leukedge.data.layouts import load_dataset
    from leukedge.data.splits import make_split

    if not _SPLIT:
        ds = load_dataset(_DATA)
        _SPLIT.update(dataset=ds, split=make_split(ds, "subject", 0).to_dict(ds))
    return _SPLIT["dataset"], json.loads(json.dumps(_SPLIT["split"]))


@st.composite
def split_texts(draw: Any) -> str:
    _, d = _dataset_and_split()
    for key in draw(st.lists(st.sampled_from([*d, "files"]), max_size=3)):
        if (
            key == "files"
            and isinstance(d.get("files"), list)
            and d["files"]
            and draw(st.booleans())
        ):
            d["files"][0] = draw(st.one_of(json_values, st.fixed_dictionaries({"path": cells})))
        else:
            d[key] = draw(json_values)
    return json.dumps(d)


@FAST
@given(st.one_of(split_texts(), st.text(max_size=80), json_values.map(json.dumps)))
def test_split_file_of_any_text_gives_a_split_or_a_dataset_error(text: str) -> None:
    from leukedge.data.splits import SPLITS, load_split

    ds, _ = _dataset_and_split()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            split = load_split(_write(Path(tmp), "split.json", text), ds)
        except DatasetError:
            return
    assert set(split.assignment) <= {r.path for r in ds.records}
    assert set(split.assignment.values()) <= set(SPLITS)
