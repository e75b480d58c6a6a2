"""Datasets: layouts -> records (path, label, subject), subject-level splits, synthetic data."""

from leukedge.data.layouts import LAYOUTS_HELP, detect_layout, load_dataset
from leukedge.data.records import Dataset, DatasetError, Record
from leukedge.data.splits import SPLITS, Split, load_split, make_split

__all__ = [
    "LAYOUTS_HELP",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "Record",
    "Split",
    "detect_layout",
    "load_dataset",
    "load_split",
    "make_split",
]
