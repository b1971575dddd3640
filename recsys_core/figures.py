"""Figures as inline PNGs: the A/B HTML report and the Dagster UI both embed plots rather than link files."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_base64(figure: Any, dpi: int = 90) -> str:
    """A matplotlib figure as base64-encoded PNG, for `data:image/png;base64,...` URIs."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
