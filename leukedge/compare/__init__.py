"""`leukedge compare`: which model should a lab use, with the statistics to say so.

``runs`` loads run dirs and k-fold runs and lines up the images they scored;
``analysis`` puts 95 % intervals on every metric and tests every pair;
``cost`` gathers parameters, FLOPs, file sizes and bench latencies; ``report``
writes report.json, ``markdown`` report.md and ``plots`` the PNGs.
"""

from leukedge.compare.report import compare_runs
from leukedge.compare.runs import CompareError

__all__ = ["CompareError", "compare_runs"]
