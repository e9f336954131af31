"""The ``--config`` file, checked before absl parses the flags: one sentence per failure.

``ml_collections.config_flags`` runs the file while parsing flags and lets any exception
of the file escape with a traceback (or turns it into "names a field the config does not
have"). :func:`check` runs the file once the same way first (the module, then
``get_config(*args)`` with the text after a ``:`` in the path) and describes what fails:
a missing path or a directory, a syntax error, an exception raised by the file (naming its
line) or by ``get_config``, a missing ``get_config``, a result that is not a
``ConfigDict``, or one that lacks fields every experiment config has (those of
``config_base.get_config``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback

import ml_collections

_EXAMPLE = "configs/toy_score.py"


def _one_line(text) -> str:
    return " ".join(str(text).replace("\\n", " ").split())


def path_from_argv(argv: list[str]) -> tuple[str, list[str]] | None:
    """(file, get_config arguments) of the last ``--config`` flag in ``argv``, if any."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    if value is None:
        return None
    path, *args = value.split(":", 1)
    return path, args


def _line_in(path: str, error: BaseException) -> str:
    """' at line N (source)' of the deepest frame of ``error`` inside ``path``."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    if not frames:
        return ""
    frame = frames[-1]
    source = f" ({frame.line.strip()})" if frame.line else ""
    return f" at line {frame.lineno}{source}"


def _raised(path: str, error: BaseException, where: str) -> str:
    return (f"config file {path} raises {type(error).__name__}: {_one_line(error)[:300]} "
            f"{where}{_line_in(path, error)}; fix the file")


def _required_fields() -> list[str]:
    from ebm_vs_score import config_base

    def walk(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return list(walk(config_base.get_config("toy", "score")))


def _has(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def _check_result(path: str, config) -> str | None:
    if not isinstance(config, ml_collections.ConfigDict):
        return (f"get_config() in {path} returns {type(config).__name__}, not an "
                "ml_collections.ConfigDict; return one, e.g. ebm_vs_score.config_base."
                "get_config(scale, family) with your changes (see configs/toy_score.py)")
    required = _required_fields()
    sections = sorted({f.split(".")[0] for f in required if "." in f} - set(config.keys()))
    missing = [f"the {s} section" for s in sections] or [
        field for field in required if not _has(config, field)]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4
                                          else "")
        return (f"get_config() in {path} returns a config without {shown}; build it on "
                "ebm_vs_score.config_base.get_config(scale, family), which has every field, "
                "and change what you need (see configs/toy_score.py)")
    return None


def check(path: str, args: list[str]) -> str | None:
    """Runs config file ``path``; returns the sentence describing its failure, or None."""
    if os.path.isdir(path):
        return (f"--config={path} is a directory, not a config file; pass "
                f"--config={_EXAMPLE} or another file of configs/")
    if not os.path.isfile(path):
        return (f"config file {path!r} does not exist; pass --config=configs/<name>.py "
                "(relative to the directory you run from)")
    spec = importlib.util.spec_from_file_location("ebm_vs_score_config_check", path)
    if spec is None or spec.loader is None:
        return f"--config={path} is not a Python file; pass --config=configs/<name>.py"
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        return (f"config file {e.filename or path} has a syntax error at line {e.lineno}: "
                f"{e.msg}; fix the file")
    except Exception as e:  # noqa: BLE001 - whatever the file raises is reported
        return _raised(path, e, "when it is loaded")
    finally:
        sys.modules.pop("ebm_vs_score_config_check", None)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        return (f"config file {path} defines no get_config() function; add one that returns "
                f"the experiment's ml_collections.ConfigDict (see {_EXAMPLE})")
    try:
        config = get_config(*args)
    except Exception as e:  # noqa: BLE001
        call = f"get_config({', '.join(map(repr, args))})"
        return _raised(path, e, f"in {call}")
    return _check_result(path, config)


def override_error(error: Exception, argv: list[str]) -> str:
    """One sentence for a --config flag that absl could not apply (an override)."""
    found = path_from_argv(argv)
    path = found[0] if found else None
    if isinstance(error, SyntaxError):
        return (f"config file {error.filename or path} has a syntax error at line "
                f"{error.lineno}: {error.msg}; fix the file")
    if path is not None and not os.path.isfile(path):
        return (f"config file {path!r} does not exist; pass --config=configs/<name>.py "
                "(relative to the directory you run from)")
    if isinstance(error, (AttributeError, KeyError)):
        suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(error))
        if suggestion:
            return (f"the config has no field {suggestion.group(2)!r}; did you mean "
                    f"{suggestion.group(1)!r}? (check the --config.* flags)")
        return f"a --config.* flag names a field the config does not have ({_one_line(error)})"
    return f"--config could not be loaded: {_one_line(error)}"
