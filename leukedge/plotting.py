"""matplotlib for the report plots: headless (Agg), imported only when a plot is drawn.

Training, bench and compare draw with it; the torch-free runtime never imports it.
"""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure: Any, dpi: int = 120) -> bytes:
    """A figure as PNG bytes (written atomically by the caller); the figure is closed."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(figure)
    return buf.getvalue()
