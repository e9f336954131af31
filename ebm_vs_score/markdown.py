"""Markdown for the modes' reports: tables, the command that ran, and atomic writes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub markdown table, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def command(argv: Sequence[str] | None = None) -> str:
    """``python -m ebm_vs_score.main`` with the flags of this process (or ``argv``)."""
    flags = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m ebm_vs_score.main", *flags])


def write(path: str, lines: Sequence[str]) -> str:
    """Writes ``lines`` to ``path`` through a temporary file (never half-written)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path
