"""The layout's rules, read from the source with ``ast`` (function-local imports included):

- every module lives in a subpackage, and each subpackage's ``__init__`` docstring says what
  it may import (a ``May import:`` line); those declarations form layers (no cycle);
- no module imports a package its own package may not (an upward import), and nothing inside
  the packages imports the top-level ``tinylm`` (it re-exports from every layer);
- no import cycle between modules;
- no function-local import of tinylm outside ``tinylm/cli`` (the CLI defers its imports so
  ``tinylm --help`` answers at once; anywhere else a local import hides a cycle);
- modules stay under ~400 lines and functions under ~60.

The checker runs on the real tree, and on copies with a planted violation, to show it fails.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "tinylm"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Import:
    src: str  # importing module, e.g. "tinylm.model.gpt"
    dst: str  # imported module (a package's __init__ when the name is not a module)
    line: int
    local: bool  # inside a function


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (the tinylm package dir)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def find_imports(root: Path) -> list[Import]:
    mods = module_names(root)
    found = []
    for src, path in mods.items():
        tree = ast.parse(path.read_text())
        local_nodes = {id(n) for f in ast.walk(tree)
                       if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                       for n in ast.walk(f)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                targets = [f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in mods else n.module
                           for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                raise AssertionError(f"{path}:{n.lineno}: relative import; tinylm imports absolutely")
            else:
                continue
            for t in targets:
                if t.split(".")[0] == "tinylm" and (dst := _resolve(t, mods)) and dst != src:
                    found.append(Import(src, dst, n.lineno, id(n) in local_nodes))
    return found


def package_of(module: str) -> str:
    """"tinylm.model.gpt" -> "model"; the top-level "tinylm" is its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tinylm"


def declared_layers(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Each subpackage's ``May import:`` line, and the problems found reading them."""
    allowed, problems = {}, []
    for init in sorted(root.glob("*/__init__.py")):
        pkg, doc = init.parent.name, ast.get_docstring(ast.parse(init.read_text())) or ""
        m = re.search(r"^May import: (.+)$", doc, re.M)
        if not m:
            problems.append(f"tinylm/{pkg}/__init__.py: no 'May import:' line in its docstring")
            continue
        names = {s.strip() for s in m.group(1).split(",")} - {"nothing"}
        allowed[pkg] = names
    for pkg, names in allowed.items():
        problems += [f"tinylm/{pkg}: may import '{n}', which is no package" for n in sorted(names)
                     if n not in allowed]
    return allowed, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(root: Path) -> list[str]:
    """Every broken rule in the tinylm tree at ``root``, one line each."""
    mods = module_names(root)
    allowed, problems = declared_layers(root)
    problems += [f"{mods[m].relative_to(root.parent)}: a module outside the subpackages"
                 for m in mods if m.count(".") == 1 and not mods[m].name == "__init__.py"
                 and mods[m].parent == root]
    problems += [f"layers declared in a cycle: {' <-> '.join(c)}" for c in cycles(allowed)]
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for imp in find_imports(root):
        edges[imp.src].add(imp.dst)
        where = f"{mods[imp.src].relative_to(root.parent)}:{imp.line}"
        src_pkg, dst_pkg = package_of(imp.src), package_of(imp.dst)
        if dst_pkg == "tinylm" and src_pkg != "tinylm":
            problems.append(f"{where}: imports the top-level tinylm (it re-exports every layer); "
                            f"import the defining module")
        elif src_pkg != dst_pkg and src_pkg in allowed and dst_pkg not in allowed[src_pkg]:
            problems.append(f"{where}: {imp.src} imports {imp.dst}, but tinylm/{src_pkg} may "
                            f"import only: {', '.join(sorted(allowed[src_pkg])) or 'nothing'}")
        if imp.local and src_pkg != "cli":
            problems.append(f"{where}: function-local import of {imp.dst} (a local import hides "
                            "a cycle; import at the top)")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    return problems


def sizes(root: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES."""
    out = []
    for f in sorted(root.rglob("*.py")):
        text = f.read_text()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            out.append(f"{f.relative_to(root.parent)}: {n} lines (> {MAX_MODULE_LINES}): split it")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{f.relative_to(root.parent)}:{node.lineno} {node.name}() is "
                               f"{length} lines (> {MAX_FUNCTION_LINES})")
    return out


def planted(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of the tinylm tree with ``edits`` (file -> (old, new) text) applied."""
    root = tmp_path / "tinylm"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    for name, (old, new) in edits.items():
        path = root / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))
    return root


# -- the real tree --------------------------------------------------------------------------

def test_the_tree_keeps_the_layout_rules():
    assert violations(PACKAGE) == []


def test_modules_and_functions_stay_readable_in_size():
    assert sizes(PACKAGE) == []


def test_the_layers_are_the_ones_the_readme_shows():
    allowed, _ = declared_layers(PACKAGE)
    assert {"common", "sharing", "model", "data", "distributed", "checkpoint", "eval", "infer",
            "convert", "train", "cli"} == set(allowed)
    assert allowed["common"] == allowed["sharing"] == set()  # the ground floor
    assert allowed["cli"] == set(allowed) - {"cli"}  # the top floor
    tree = (REPO / "README.md").read_text()
    for pkg in allowed:
        assert re.search(rf"^  {pkg}/ ", tree, re.M), f"README's tree lacks tinylm/{pkg}/"


# -- the checker fails on what it forbids ----------------------------------------------------

def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = planted(tmp_path, {"model/gpt.py": (
        "\ndef is_plain(", "\ndef _leak():\n    from tinylm.train.trainer import Trainer\n"
                          "    return Trainer\n\n\ndef is_plain(")})
    found = violations(root)
    assert any("tinylm.model.gpt imports tinylm.train.trainer, but tinylm/model may import "
               "only: sharing" in v for v in found), found
    assert any("function-local import of tinylm.train.trainer" in v for v in found), found
    # and train -> ... -> model.gpt -> train.trainer closes a cycle between modules
    assert any(v.startswith("import cycle:") and "tinylm.model.gpt" in v for v in found), found


def test_a_module_level_upward_import_is_caught(tmp_path):
    root = planted(tmp_path, {"data/corpus.py": (
        "from tinylm.common.atomic import", "from tinylm.model.gpt import GPT\n"
                                            "from tinylm.common.atomic import")})
    found = violations(root)
    assert len(found) == 1 and "tinylm.data.corpus imports tinylm.model.gpt" in found[0], found


def test_a_cycle_within_one_package_is_caught(tmp_path):
    root = planted(tmp_path, {"model/rotary.py": (
        "import torch\n", "import torch\n\nfrom tinylm.model.gpt import GPT\n")})
    found = violations(root)
    assert any(v.startswith("import cycle:") and "tinylm.model.gpt" in v
               and "tinylm.model.rotary" in v for v in found), found


def test_importing_the_top_level_api_from_inside_is_caught(tmp_path):
    root = planted(tmp_path, {"infer/generate.py": (
        "from tinylm.model.gpt import GPT", "from tinylm import GPT")})
    assert any("imports the top-level tinylm" in v for v in violations(root))


def test_declarations_are_required_and_must_form_layers(tmp_path):
    root = planted(tmp_path, {"model/__init__.py": ("May import: sharing", "May import: sharing, train"),
                              "eval/__init__.py": ("May import:", "Imports:")})
    found = violations(root)
    assert "tinylm/eval/__init__.py: no 'May import:' line in its docstring" in found
    assert any(v.startswith("layers declared in a cycle:") and "model" in v and "train" in v
               for v in found), found


def test_size_limits_are_checked(tmp_path):
    long_fn = "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "    return x\n"
    root = planted(tmp_path, {"common/checks.py": ("from typing import Any\n",
                                                   "from typing import Any\n\n\n" + long_fn)})
    assert any("long() is" in v for v in sizes(root))


# -- the public API ----------------------------------------------------------------------------

def test_the_top_level_names_resolve_lazily():
    code = ("import sys, tinylm; assert 'torch' not in sys.modules, 'import tinylm pulled torch'; "
            "names = {n: getattr(tinylm, n) for n in tinylm.__all__}; "
            "from tinylm import GPT, tie; from tinylm.model.gpt import GPT as G; "
            "from tinylm.sharing.tying import tie as t; assert GPT is G and tie is t; "
            "print(len(names))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import tinylm
    assert int(proc.stdout) == len(tinylm.__all__) >= 20
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tinylm.nope  # noqa: B018
