"""Metadata a person reads in the Dagster UI: Markdown tables and inline plots."""

from __future__ import annotations

import pandas as pd
from dagster import MetadataValue

from recsys_core.figures import png_base64


def table(frame: pd.DataFrame, max_rows: int = 20) -> MetadataValue:
    """A Markdown table of the first `max_rows` rows (NA shown as empty)."""
    shown = frame.head(max_rows).astype(object).where(frame.head(max_rows).notna(), "")
    return MetadataValue.md(shown.to_markdown(index=False))


def figure(fig, alt: str) -> MetadataValue:
    """A matplotlib figure as an inline PNG in Markdown, so the UI shows the plot itself."""
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{png_base64(fig)})")
