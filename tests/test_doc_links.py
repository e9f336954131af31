"""Every relative link and image of README.md and docs/*.md (and the other documents of
the repository) resolves to a file in the repository, and every same-page anchor to a
heading of that page."""

from __future__ import annotations

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "BENCHMARKS.md", "docs/*.md", "benchmarks/README.md", "launch/README.md",
        "results/*.md"]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def documents() -> list[str]:
    return sorted({os.path.relpath(p, REPO) for pattern in DOCS
                   for p in glob.glob(os.path.join(REPO, pattern))})


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(doc: str) -> list[str]:
    with open(os.path.join(REPO, doc)) as f:
        text = _CODE.sub("", f.read())
    headings = {anchor(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        if not path:
            if fragment not in headings:
                broken.append(target)
            continue
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), path))
        if not resolved.startswith(REPO + os.sep) or not os.path.exists(resolved):
            broken.append(target)
    return broken


def test_the_documents_are_found():
    assert {"README.md", "BENCHMARKS.md", "docs/DESIGN.md"} <= set(documents())


@pytest.mark.parametrize("doc", documents())
def test_every_relative_link_resolves_inside_the_repository(doc):
    assert broken_links(doc) == []


def test_a_broken_link_is_found(tmp_path, monkeypatch):
    """The check can fail: a missing figure and a missing anchor are reported."""
    monkeypatch.setattr(__import__(__name__), "REPO", str(tmp_path))
    (tmp_path / "a.md").write_text("# Title\n![fig](figures/none.png) [ok](#title) [no](#nope)"
                                   " [web](https://example.org) `[code](none.md)`\n")
    assert broken_links("a.md") == ["figures/none.png", "#nope"]
