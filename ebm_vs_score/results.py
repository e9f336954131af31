"""Records of published numbers, and the document tables rendered from them.

A *record* is a small JSON file under ``results/`` (or one JSON object per line of a
``.jsonl`` file) written by the command whose numbers a document quotes
(:func:`write_record`): ``schema``, ``name``, ``command``, ``commit``, ``dirty``, ``date``,
``machine`` (CPU model and count, OS, devices, library versions, XLA_FLAGS), ``load``
(1/5/15-minute load at start and end) and ``values``: numbers or measurements
``{"value", "se", "n", ...}`` (:func:`measurement`). The benchmark harness's JSONs
(``benchmarks/results/*.json``; ``machine`` holds command, date and load) are read as
records whose values are the whole JSON (:func:`load`).

A document marks what is rendered from records: ``<!-- results:table KIND SOURCE...
[LABEL=SOURCE...] [option=value...] -->`` ... ``<!-- /results -->`` around a block, and
``<!-- results:value SOURCE PATH [fmt=.3g] [scale=1e3] [se] -->2.44<!-- /results -->``
inside a line (PATH: dotted keys into the values; list items by position or ``name``).
SOURCE is a path from the repository root; KIND names a renderer (:func:`table_kinds`).

``python -m ebm_vs_score.results --render`` rewrites every marked block of README.md,
BENCHMARKS.md and docs/*.md; ``--check`` exits 1 listing each block that differs from its
records or whose record is missing; ``--strict`` also lists numbers outside marked blocks.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ebm_vs_score.cpuinfo import cpu_id, cpu_model  # records name the CPU with these

SCHEMA = 1
RESULTS_DIR_ENV = "EBM_RESULTS_DIR"
DEFAULT_DOCS = ("README.md", "BENCHMARKS.md", "docs/*.md")
_VERSIONS = ("jax", "jaxlib", "numpy", "scipy", "flax", "optax", "orbax-checkpoint")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class RecordError(ValueError):
    """A marked block cannot be rendered: missing record, unknown kind or bad arguments."""


# ----------------------------------------------------------------------------------------
# Writing records
# ----------------------------------------------------------------------------------------


def measurement(value: float, se: float | None = None, n: int | None = None,
                **extra: Any) -> dict[str, Any]:
    """A value with its standard error and sample size (None fields left out)."""
    out = {"value": value, "se": se, "n": n, **extra}
    return {k: v for k, v in out.items() if v is not None}


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and count, OS, accelerator devices (if JAX is already in use), library
    versions and XLA_FLAGS."""
    devices = None
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        devices = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    versions = {"python": platform.python_version()}
    versions.update({p: _version(p) for p in _VERSIONS})
    return {"cpu_model": cpu_model(), "cpu_id": cpu_id(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "devices": devices, "versions": versions,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", _PACKAGE_DIR, *args], capture_output=True,
                             text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def commit() -> tuple[str | None, bool | None]:
    """(commit of the code that runs, whether tracked files differ from it); (None, None)
    outside a git checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None, None
    return head, bool(_git("status", "--porcelain", "--untracked-files=no"))


def default_command() -> str:
    """This process's command line, as ``python -m package.module ARGS`` for a module."""
    argv = list(sys.argv)
    script = os.path.abspath(argv[0]) if argv and argv[0] else ""
    root = os.path.dirname(_PACKAGE_DIR)
    if script.endswith(".py") and script.startswith(root + os.sep):
        module = os.path.relpath(script, root)[:-3].replace(os.sep, ".")
        if module.endswith(".__main__"):
            module = module[: -len(".__main__")]
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join(["python", *argv])


def results_dir() -> str:
    """Where records go: $EBM_RESULTS_DIR, else ``results/`` in the working directory (the
    repository root, where the commands are run)."""
    return os.path.abspath(os.environ.get(RESULTS_DIR_ENV) or "results")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / jax scalars and arrays
        return value.tolist()
    raise TypeError(f"write_record: {type(value).__name__} is not JSON-serializable")


def write_record(name: str, values: dict[str, Any], *, command: str | None = None,
                 load_start: Sequence[float] | None = None, directory: str | None = None,
                 append: bool = False) -> str:
    """Writes the record ``name`` (``<directory>/<name>.json``, atomically; with ``append``
    one more line of ``<name>.jsonl``) and returns its path.

    Args:
      name: file stem, e.g. ``study_digits``.
      values: the numbers, each a number or a :func:`measurement`; JSON-serializable
        (numpy values are converted).
      command: the command that made them (default: this process's command line).
      load_start: the load average when the command started (:func:`load_average`); the
        end load is read now.
      directory: default :func:`results_dir`.
    """
    if not re.fullmatch(r"[\w.+-]+", name):
        raise ValueError(f"record name {name!r} must be a plain file stem (letters, digits, "
                         "'_', '.', '+', '-')")
    sha, dirty = commit()
    record = {"schema": SCHEMA, "name": name, "command": command or default_command(),
              "commit": sha, "dirty": dirty,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(),
              "load": {"start": list(load_start) if load_start else None, "end": load_average()},
              "values": values}
    directory = directory or results_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + (".jsonl" if append else ".json"))
    text = json.dumps(record, default=_json_default, indent=None if append else 1,
                      ensure_ascii=False, allow_nan=True)
    if append:
        with open(path, "a") as f:
            f.write(text + "\n")
        return path
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------


def normalize(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """A record in the common form (with its ``path``), from a record or a benchmark JSON."""
    if "values" in raw and "schema" in raw:
        record = dict(raw)
    else:
        machine = raw.get("machine", {}) if isinstance(raw.get("machine"), dict) else {}
        record = {"schema": 0, "name": os.path.splitext(os.path.basename(path))[0],
                  "command": machine.get("command"), "commit": machine.get("commit"),
                  "date": machine.get("date"), "machine": machine,
                  "load": {"start": machine.get("load_average_start"),
                           "end": machine.get("load_average_end")},
                  "values": raw}
    record["path"] = path
    return record


def load(path: str, root: str = ".") -> dict[str, Any] | list[dict[str, Any]]:
    """The record at ``path`` (relative to ``root``); a list of records for ``.jsonl``."""
    full = os.path.join(root, path)
    if not os.path.isfile(full):
        raise RecordError(f"record {path} does not exist")
    with open(full) as f:
        if path.endswith(".jsonl"):
            return [normalize(json.loads(line), path) for line in f if line.strip()]
        try:
            return normalize(json.load(f), path)
        except json.JSONDecodeError as e:
            raise RecordError(f"record {path} is not valid JSON ({e})") from None


def lookup(values: Any, path: str) -> Any:
    """The entry of ``values`` at a dotted ``path``; list items by index or ``name``."""
    node = values
    for key in path.split("."):
        if isinstance(node, list):
            match = [x for x in node if isinstance(x, dict) and x.get("name") == key]
            if match:
                node = match[0]
            elif key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise RecordError(f"no item {key!r} in the list at {path!r}")
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise RecordError(f"no key {key!r} of {path!r}")
    return node


def format_value(node: Any, fmt: str = ".4g", scale: float = 1.0, se: bool = False) -> str:
    """A number, or a measurement's value (`` ± se`` appended with ``se``), formatted."""
    if isinstance(node, dict):
        text = format_value(node.get("value"), fmt, scale)
        if se and node.get("se") is not None:
            text += f" ± {format(float(node['se']) * scale, '.2g')}"
        return text
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise RecordError(f"{node!r} is not a number")
    return format(float(node) * scale, fmt)


# ----------------------------------------------------------------------------------------
# Marked blocks
# ----------------------------------------------------------------------------------------


class Spec(NamedTuple):
    """A marker's arguments: the kind, its (label, path) sources and its options."""

    kind: str
    sources: list[tuple[str | None, str]]
    options: dict[str, str]


def parse_spec(text: str) -> Spec:
    """``KIND SOURCE... LABEL=SOURCE... key=value...``; a source ends in .json/.jsonl."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise RecordError(f"cannot parse marker arguments {text!r} ({e})") from None
    if not tokens:
        raise RecordError("a results marker needs a kind")
    sources, options = [], {}
    for token in tokens[1:]:
        key, eq, value = token.rpartition("=") if "=" in token else ("", "", token)
        if value.endswith((".json", ".jsonl")):
            sources.append((key if eq else None, value))
        elif eq:
            options[key] = value
        else:
            raise RecordError(f"marker argument {token!r} is neither a .json/.jsonl source "
                              "nor key=value")
    return Spec(tokens[0], sources, options)


Renderer = Callable[[Spec, list[tuple[str | None, Any]]], list[str]]


def values_table(spec: Spec, records: list[tuple[str | None, Any]]) -> list[str]:
    """``values SOURCE path=P columns=a,b [fmt=.4g] [se]``: one row per entry of the dict
    (or list of dicts with ``name``) at P of the record's values, one column per key."""
    if len(records) != 1 or "columns" not in spec.options:
        raise RecordError("a values table needs one SOURCE and columns=a,b,...")
    record = records[0][1][-1] if isinstance(records[0][1], list) else records[0][1]
    node = lookup(record["values"], spec.options["path"]) if "path" in spec.options \
        else record["values"]
    items = node.items() if isinstance(node, dict) else [(x.get("name"), x) for x in node]
    columns = spec.options["columns"].split(",")
    fmt, se = spec.options.get("fmt", ".4g"), spec.options.get("se") == "1"
    lines = ["| " + " | ".join([""] + columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in items:
        cells = [format_value(lookup(row, c), fmt, se=se) for c in columns]
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return lines


def table_kinds() -> dict[str, Renderer]:
    """Every table renderer by kind: ``values`` (any record), the study's and (from the
    repository) the benchmarks'."""
    from ebm_vs_score.study import verdicts

    kinds: dict[str, Renderer] = {"values": values_table, **verdicts.TABLE_KINDS}
    try:
        from benchmarks import tables as bench_tables
    except ImportError:  # installed without the repository: only the library's kinds
        return kinds
    kinds.update(bench_tables.TABLE_KINDS)
    return kinds


def render_block(spec_text: str, root: str, kinds: dict[str, Renderer]) -> str:
    """The lines of a marked table block (with their final newline)."""
    spec = parse_spec(spec_text)
    if spec.kind not in kinds:
        raise RecordError(f"unknown table kind {spec.kind!r}; valid kinds: {sorted(kinds)}")
    records = [(label, load(path, root)) for label, path in spec.sources]
    return "\n".join(kinds[spec.kind](spec, records)) + "\n"


def render_value(spec_text: str, root: str) -> str:
    """The text of an inline value marker: ``SOURCE PATH [fmt=] [scale=] [se]``."""
    tokens = shlex.split(spec_text)
    if len(tokens) < 2:
        raise RecordError(f"a value marker needs SOURCE and PATH, got {spec_text!r}")
    record = load(tokens[0], root)
    if isinstance(record, list):
        record = record[-1]
    options = dict(t.split("=", 1) for t in tokens[2:] if "=" in t)
    return format_value(lookup(record["values"], tokens[1]), options.get("fmt", ".4g"),
                        float(options.get("scale", 1.0)), "se" in tokens[2:])


_BLOCK = re.compile(r"<!-- results:table (?P<spec>[^\n]*?) -->\n(?P<body>.*?)<!-- /results -->",
                    re.S)
_VALUE = re.compile(r"<!-- results:value (?P<spec>[^\n]*?) -->(?P<body>[^\n]*?)<!-- /results -->")


class Problem(NamedTuple):
    doc: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.message}"


def _first_difference(old: str, new: str) -> str:
    a, b = old.splitlines(), new.splitlines()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"line {i + 1} of the block: {x.strip()!r} -> records: {y.strip()!r}"
    return f"{len(a)} lines in the document, {len(b)} from the records"


def process(text: str, doc: str, root: str) -> tuple[str, list[Problem]]:
    """(the document with every marked block rendered, the blocks that differ or fail)."""
    problems: list[Problem] = []
    kinds = table_kinds() if _BLOCK.search(text) else {}

    def substitute(match: re.Match, render: Callable[[str], str], what: str) -> str:
        line = text.count("\n", 0, match.start()) + 1
        body = match.group("body")
        try:
            new = render(match.group("spec"))
        except RecordError as e:
            numbers = list(dict.fromkeys(n for _, found in unrecorded(body) for n in found))
            problems.append(Problem(doc, line, f"{what} `{match.group('spec')}`: {e}; "
                                    f"its numbers have no record: {', '.join(numbers) or '-'}"))
            return match.group(0)
        if new != body:
            problems.append(Problem(doc, line, f"{what} `{match.group('spec')}` differs from "
                                    f"its records ({_first_difference(body, new)})"))
        return match.group(0)[: match.start("body") - match.start()] + new + "<!-- /results -->"

    text = _BLOCK.sub(lambda m: substitute(m, lambda s: render_block(s, root, kinds), "table"),
                      text)
    text = _VALUE.sub(lambda m: substitute(m, lambda s: render_value(s, root), "value"), text)
    return text, problems


# ----------------------------------------------------------------------------------------
# Numbers outside marked blocks
# ----------------------------------------------------------------------------------------

_NOT_RESULTS = re.compile(r"`[^`]*`|\]\([^)]*\)|<!--.*?-->|https?://\S+|\d+(?:\.\d+){2,}"
                          r"|\d{4}-\d{2}-\d{2}(?:T[\d:]+Z?)?|\d+:\d+"
                          r"|(?<=[A-Za-z.]\s)(?:19|20)\d\d\b(?!\.\d)"  # a year: "Ho et al. 2020"
                          r"|\b(?:Table|Fig\.|Sec\.|eq\.|Eq\.)\s*\d+(?:[–-]\d+)?")
_NUMBER = re.compile(r"(?<![\w.])[-−+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?:%|x\b)?")


def numbers_in(text: str, *, cells: bool = False) -> list[str]:
    """Result-like numbers of a text: decimals, percentages, ratios (1.4x) and thousands
    (3,557); with ``cells`` also plain integers (table cells). Inline code, links, dates,
    times, years after a name, equation/table/figure numbers and version strings are not
    numbers here."""
    text = _NOT_RESULTS.sub(" ", text)
    out = []
    for token in _NUMBER.findall(text):
        token = token.rstrip(",")
        if cells or any(c in token for c in ".,%x"):
            out.append(token)
    return out


def unrecorded(text: str) -> list[tuple[int, list[str]]]:
    """(line, numbers) for every line outside marked blocks with result-like numbers:
    prose, markdown table cells after the first column and non-code fenced blocks;
    commands (bash/python fences) and lines marked ``<!-- results:ignore -->`` are skipped."""
    blank = lambda m: "\n" * m.group(0).count("\n")
    text = _VALUE.sub(" ", _BLOCK.sub(blank, text))
    out, fence = [], None
    for i, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "text")
            continue
        if "results:ignore" in line or fence in ("bash", "sh", "python", "console"):
            continue
        if stripped.startswith("|") and fence is None:
            if set(stripped) <= set("|-: "):
                continue
            cells = [c for c in stripped.strip("|").split("|")[1:]]
            numbers = [n for c in cells for n in numbers_in(c, cells=True)]
        else:
            numbers = numbers_in(line, cells=fence is not None)
        if numbers:
            out.append((i, numbers))
    return out


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def documents(root: str, patterns: Sequence[str]) -> list[str]:
    """Existing documents matching ``patterns`` (relative to ``root``), in order."""
    found: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            rel = os.path.relpath(path, root)
            if rel not in found:
                found.append(rel)
    return found


def run(mode: str, root: str, docs: Sequence[str], strict: bool = False) -> int:
    """Renders or checks ``docs``; prints one line per problem; the exit status."""
    problems: list[Problem] = []
    for doc in documents(root, docs):
        with open(os.path.join(root, doc)) as f:
            text = f.read()
        new, found = process(text, doc, root)
        if mode == "render":
            if new != text:
                with open(os.path.join(root, doc), "w") as f:
                    f.write(new)
                print(f"rendered {doc}")
            found = [p for p in found if "differs from" not in p.message]
        problems += found
        if strict:
            problems += [Problem(doc, line, "no record for " + ", ".join(numbers))
                         for line, numbers in unrecorded(new)]
    for p in problems:
        print(p)
    if mode == "check" and not problems:
        print("results: every marked block matches its records")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebm_vs_score.results",
                                     description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--render", action="store_true", help="rewrite the marked blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if a block differs")
    parser.add_argument("--strict", action="store_true",
                        help="also list numbers outside marked blocks (no record)")
    parser.add_argument("--root", default=".", help="the repository root")
    parser.add_argument("docs", nargs="*", default=list(DEFAULT_DOCS),
                        help=f"documents (globs, from the root); default {DEFAULT_DOCS}")
    args = parser.parse_args(argv)
    return run("render" if args.render else "check", args.root, args.docs, args.strict)


if __name__ == "__main__":
    sys.exit(main())
