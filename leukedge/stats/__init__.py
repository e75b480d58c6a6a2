"""Statistics for honest model comparisons on small test sets.

``scores``: the reported metrics, computed for many bootstrap resamples at once;
``bootstrap``: percentile intervals by resampling subjects (or images), stratified
by class, through :func:`scipy.stats.bootstrap`; ``paired``: McNemar (statsmodels),
paired bootstrap differences and the Holm correction. Torch-free.
"""

from leukedge.stats.bootstrap import Interval, Units, bootstrap_interval, resampling_units
from leukedge.stats.paired import holm, mcnemar_test, paired_difference
from leukedge.stats.scores import METRICS, Scorer, point_scores

__all__ = [
    "METRICS",
    "Interval",
    "Scorer",
    "Units",
    "bootstrap_interval",
    "holm",
    "mcnemar_test",
    "paired_difference",
    "point_scores",
    "resampling_units",
]
