"""docs/DESIGN.md is the design of record: every "DESIGN.md rule N" the code cites is there."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
CITATION = re.compile(r"DESIGN\.md,?\s+rules?\s+([\d,\s and]*\d)")


def _rules_in_the_doc() -> set[int]:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    return {int(n) for n in re.findall(r"^### Rule (\d+):", text, flags=re.M)}


def _citations() -> dict[str, set[int]]:
    found = {}
    for folder in ("ebm_vs_score", "tests", "benchmarks", "launch", "scripts", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".md", ".sh", ".sbatch") or not path.is_file():
                continue
            for match in CITATION.finditer(path.read_text()):
                numbers = {int(n) for n in re.findall(r"\d+", match.group(1))}
                found.setdefault(str(path.relative_to(ROOT)), set()).update(numbers)
    return found


def test_every_cited_rule_is_in_docs_design_md():
    rules = _rules_in_the_doc()
    assert rules == set(range(1, len(rules) + 1)) and len(rules) >= 10
    citations = _citations()
    assert citations  # the pattern matches the way the code cites the doc
    missing = {path: sorted(cited - rules) for path, cited in citations.items() if cited - rules}
    assert not missing, missing


def test_the_citation_pattern_reads_lists_of_rules():
    numbers = [re.findall(r"\d+", m.group(1))
               for m in CITATION.finditer("(DESIGN.md rules 3, 6 and 7) and DESIGN.md, rule 2")]
    assert numbers == [["3", "6", "7"], ["2"]]
