"""What a finished cell left in its run directory: result, metrics, and the cause of a failure.

Pure file readers: a missing or half-written file reads as "nothing" (None, [], ""), never as an
exception, because a killed cell can leave anything behind.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Optional


def read_result(path: Path) -> Optional[dict[str, Any]]:
    """result.json as a dict; None when missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers as numbers ([] when the file is missing)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for k, v in row.items():
            try:
                parsed[k] = float(v) if v not in ("", None) else None
            except ValueError:
                parsed[k] = v
        out.append(parsed)
    return out


# torchrun's own log lines ("E1203 17:32:01.086000 ...") and its failure banner are noise next to
# the worker's error, which is what a reader needs.
_LAUNCHER_NOISE = re.compile(r"^[EWI]\d{4} |ChildFailedError|^\s+\w+\s*: |^\s*File \"|^Traceback|^\[\d+\]:$"
                             r"|^Failures:|^Root Cause|FAILED$|^<NO_OTHER_FAILURES>")
_ERROR_LINE = re.compile(r"\w*(Error|Exception)\b|error:|Killed|[Oo]ut of memory")


def error_summary(path: Path) -> str:
    """:func:`summarize_stderr` of a log file ("" when it cannot be read)."""
    try:
        return summarize_stderr(path.read_text(errors="replace"))
    except OSError:
        return ""


def summarize_stderr(text: str) -> str:
    """The most telling line of a failed cell's stderr: the last error-looking line that is not
    launcher noise (for torchrun cells, the worker's own error), else the last non-empty line."""
    # Noise is matched on raw lines: the banner's "  host      : ..." rows are told apart by indent.
    useful = [ln.strip() for ln in text.splitlines()
              if ln.strip() and not _LAUNCHER_NOISE.search(ln) and not set(ln.strip()) <= set("=-*^~ ")]
    errors = [ln for ln in useful if _ERROR_LINE.search(ln)]
    return (errors or useful or [""])[-1][:300]


def tail_lines(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (possibly huge) log file; "" when it cannot be read."""
    try:
        text = path.read_bytes()[-20000:].decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
