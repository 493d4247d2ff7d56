"""The package's import structure: every internal import at module top, no cycle, no upward import.

Layers, bottom to top (docs/DEVELOPING.md); a module may import only from its own layer or below:
utilities (+ paths, version) -> dataset -> experiment_planning -> preprocessing -> networks -> models -> training
-> generation -> inference | evaluation -> demo | scheduling -> run.
Inference and evaluation use trained models through ``models`` and never import ``training`` (nor anything
that is only reachable through it).

Check from the command line: ``python -m pytest tests/test_layers.py -q``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "neonet_toolkit"
LAYERS = {
    "__init__": 0, "paths": 0, "version": 0, "utilities": 0,
    "dataset": 1, "experiment_planning": 2, "preprocessing": 3, "networks": 4, "models": 5, "training": 6,
    "generation": 7, "inference": 8, "evaluation": 8, "demo": 9, "scheduling": 9, "run": 10,
}
# packages that must not import a lower package although the ranks allow it: {importer: forbidden packages}
FORBIDDEN = {"inference": {"training"}, "evaluation": {"training"}, "scheduling": {"training"}}
# (importer, imported) pairs exempt from FORBIDDEN, each with its reason; keep this empty
FORBIDDEN_EXEMPT: dict[tuple[str, str], str] = {}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _internal_imports(path: Path):
    """(imported module, is_inside_function, lineno) for every neonet_toolkit import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mod = _module(path)
    is_pkg = path.name == "__init__.py"
    inside = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(x) for x in ast.walk(n) if x is not n)
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (n.level - 1)]
                targets = [".".join(base + ([n.module] if n.module else []))]
            else:
                targets = [n.module or ""]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "neonet_toolkit":
                yield t, id(n) in inside, n.lineno


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


FILES = sorted(ROOT.rglob("*.py"))


def test_every_top_level_package_has_a_layer():
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= set(LAYERS)


def test_no_function_local_internal_import():
    bad = [f"{p.relative_to(ROOT.parent)}:{ln} imports {t}" for p in FILES for t, local, ln in _internal_imports(p)
           if local]
    assert not bad, "internal imports belong at module top:\n" + "\n".join(bad)


def test_no_upward_import():
    bad = []
    for p in FILES:
        src = _module(p)
        for t, _, ln in _internal_imports(p):
            if t.count(".") >= 1 and _layer(t) > _layer(src):
                bad.append(f"{p.relative_to(ROOT.parent)}:{ln} ({src}) imports {t} from a higher layer")
    assert not bad, "\n".join(bad)


def test_no_module_cycle():
    mods = {_module(p): p for p in FILES}
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for t, _, _ in _internal_imports(p):
            dst = t if t in mods else t.rsplit(".", 1)[0]
            if dst in mods and dst != m:
                graph[m].add(dst)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in graph[v]:
            if state.get(w) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(w):] + [w]))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _forbidden_imports(files) -> list[str]:
    bad = []
    for p in files:
        src = _module(p)
        for t, _, ln in _internal_imports(p):
            if _package(t) in FORBIDDEN.get(_package(src), ()) and (src, t) not in FORBIDDEN_EXEMPT:
                bad.append(f"{p.relative_to(ROOT.parent)}:{ln} ({src}) imports {t}")
    return bad


def test_inference_and_evaluation_do_not_import_training():
    bad = _forbidden_imports(FILES)
    assert not bad, ("inference/evaluation take trained models from neonet_toolkit.models, never from training:\n"
                     + "\n".join(bad))


def test_forbidden_import_is_detected(tmp_path, monkeypatch):
    """The rule above fails on an inference module importing training (the check itself can fail)."""
    fake_root = tmp_path / "neonet_toolkit"
    (fake_root / "inference").mkdir(parents=True)
    bad_file = fake_root / "inference" / "x.py"
    bad_file.write_text("from neonet_toolkit.training.seg.masks import build_pred_patches\n"
                        "from neonet_toolkit.models.seg import model_folds\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert _forbidden_imports([bad_file]) == [
        "neonet_toolkit/inference/x.py:1 (neonet_toolkit.inference.x) imports neonet_toolkit.training.seg.masks"]
