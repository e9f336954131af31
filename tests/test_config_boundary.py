"""The one crossing (DESIGN.md rule 5): only the entry points and the config readers handle
an ``ml_collections.ConfigDict``; every module below them (builders, models, data, train,
evaluate, samplers, losses, the feature packages, the math) takes typed settings or plain
arguments.

The check reads each module's syntax tree, so it sees attribute and item reads
(``config.data.dataset``, ``cfg["training"]``) as well as imports; the synthetic snippets
below show that it fails where it should.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ebm_vs_score"

# The crossing: the entry points that load a config (main, the study planner) and the
# modules that build configs or turn them into typed settings.
CROSSING = {"main.py", "study/plan.py", "config_base.py", "config_file.py", "config_read.py",
            "config_math.py", "settings.py"}
# Modules that make or read ConfigDicts: only the crossing imports them.
CONFIG_MODULES = {"ml_collections", "config_base", "config_file", "config_read", "config_math"}
# settings' functions that take a ConfigDict (the others take Settings or plain dicts).
CONFIG_TAKING = {"from_config", "validate"}


def _is_config_name(name: str) -> bool:
    """A variable that by its name holds a config: config, cfg, conf, *_config, *_cfg."""
    return name in ("config", "cfg", "conf") or name.endswith(("_config", "_cfg"))


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def _names_a_config_module(module: str) -> bool:
    return any(part in CONFIG_MODULES for part in module.split("."))


def offences(source: str) -> list[str]:
    """What in ``source`` handles a ConfigDict: imports of ml_collections or the config
    modules, ``ConfigDict`` itself, calls of ``settings.from_config`` / ``validate``, and
    attribute or item reads of a variable named as a config."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        found += [f"{line}: imports {m}" for m in _imported_modules(node)
                  if _names_a_config_module(m)]
        if isinstance(node, ast.Name) and node.id == "ConfigDict" or (
                isinstance(node, ast.Attribute) and node.attr == "ConfigDict"):
            found.append(f"{line}: names ConfigDict")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in CONFIG_TAKING and isinstance(node.func.value, ast.Name)
                and "settings" in node.func.value.id):
            found.append(f"{line}: calls {node.func.value.id}.{node.func.attr} (a ConfigDict)")
        if (isinstance(node, ast.Attribute | ast.Subscript) and isinstance(node.value, ast.Name)
                and _is_config_name(node.value.id)):
            found.append(f"{line}: reads {node.value.id} ({ast.unparse(node)[:40]})")
    return found


def below_the_crossing() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if p.relative_to(PACKAGE).as_posix() not in CROSSING)


def test_no_module_below_the_crossing_handles_a_config():
    offenders = {}
    for path in below_the_crossing():
        found = offences(path.read_text())
        if found:
            offenders[path.relative_to(PACKAGE).as_posix()] = found[:3]
    assert not offenders, offenders


def test_the_walk_covers_models_data_and_the_feature_packages():
    walked = {p.relative_to(PACKAGE).parts[0] for p in below_the_crossing()}
    assert {"models", "data", "evaluate", "samplers", "compose", "inpaint", "drl", "study",
            "builders.py", "train.py", "workdir.py"} <= walked


@pytest.mark.parametrize("source", [
    "import ml_collections\n",
    "from ml_collections import config_dict\n",
    "from ebm_vs_score import config_base\n",
    "from ebm_vs_score.config_read import read\n",
    "def f(x: 'ml_collections.ConfigDict'):\n    return ConfigDict(x)\n",
    "def f(config):\n    return config.data.dataset\n",
    "def f(model_config):\n    return model_config.ch\n",
    "def f(cfg):\n    return cfg['training']['batch_size']\n",
    "def f(config):\n    return config.get('seed')\n",
    "from ebm_vs_score import settings\ns = settings.from_config(c)\n",
    "from ebm_vs_score import settings as settings_lib\nsettings_lib.validate(c)\n",
])
def test_the_check_finds_a_config_read(source):
    assert offences(source), source


@pytest.mark.parametrize("source", [
    "def f(s):\n    return s.data.dataset, s.training.batch_size\n",
    "def f(data: 'settings.DataSettings'):\n    return data.image_size\n",
    "from ebm_vs_score import settings\ns = settings.from_dict(tree)\n",
    "configured = 3\nx = configured + 1\n",
])
def test_the_check_passes_typed_settings(source):
    assert not offences(source), offences(source)
