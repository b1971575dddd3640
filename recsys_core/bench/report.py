"""Common output for every benchmark: one JSON file plus a plain-text table on stdout."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import psutil


def machine_facts() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Left-aligned text table; floats to 4 significant digits."""
    if not rows:
        return "(no rows)"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    table = [columns] + [[cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_report(name: str, rows: list[dict[str, Any]], json_path: str | Path | None, **extra: Any) -> dict[str, Any]:
    """Prints the table and writes {benchmark, machine, rows, **extra} as JSON when a path is given."""
    report = {"benchmark": name, "machine": machine_facts(), "rows": rows, **extra}
    print(f"\n== recsys bench {name} ==")
    print(format_table(rows))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {path}")
    return report
