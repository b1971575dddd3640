"""Metadata a person reads in the Dagster UI: Markdown tables and inline plots."""

from __future__ import annotations

import base64
import io

import pandas as pd
from dagster import MetadataValue


def table(frame: pd.DataFrame, max_rows: int = 20) -> MetadataValue:
    """A Markdown table of the first `max_rows` rows (NA shown as empty)."""
    shown = frame.head(max_rows).astype(object).where(frame.head(max_rows).notna(), "")
    return MetadataValue.md(shown.to_markdown(index=False))


def figure(fig, alt: str) -> MetadataValue:
    """A matplotlib figure as an inline PNG in Markdown, so the UI shows the plot itself."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
