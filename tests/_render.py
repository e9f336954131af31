"""Renders one results table from a record dict, as a document would (tests' helper)."""

import json
import os

from ebm_vs_score import results


def render_table(tmp_path, kind: str, record: dict) -> str:
    """The text of a document holding ``<!-- results:table KIND results/r.json -->`` after
    ``results --render``, with ``record`` written as ``results/r.json``."""
    os.makedirs(tmp_path / "results", exist_ok=True)
    (tmp_path / "results/r.json").write_text(json.dumps(record))
    (tmp_path / "B.md").write_text(f"<!-- results:table {kind} results/r.json -->\n"
                                   "<!-- /results -->\n")
    assert results.run("render", str(tmp_path), ["B.md"]) == 0
    return (tmp_path / "B.md").read_text()
