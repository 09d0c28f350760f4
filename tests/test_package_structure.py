"""The package's shape: imports run one way (no circles), private names stay in their module, and
every model family's declaration is complete and reaches every command."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from kerapose.cli import main
from kerapose.models.registry import FAMILIES, family_named, model_names

PACKAGE = Path(__file__).resolve().parents[1] / "kerapose"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    mods = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module -> the kerapose modules it imports (anywhere in the file, functions included), and
    the (module, name) pairs that import a private name from another module."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kerapose"):
                        edges[mod].add(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kerapose"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in mods:
                        edges[mod].add(full)
                    else:
                        edges[mod].add(node.module)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append((mod, full))
    return {m: {t for t in ts if t in mods and t != m} for m, ts in edges.items()}, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walker_finds_a_circle_and_a_private_import(tmp_path):
    pkg = tmp_path / "kerapose"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from kerapose.sub import b  # inside a function: still an edge\n")
    (pkg / "sub" / "b.py").write_text("import kerapose.c\n")
    (pkg / "c.py").write_text("from kerapose.a import f, _hidden\n")
    edges, private = _imports(_modules(pkg))
    assert _cycles(edges) == [["kerapose.a", "kerapose.c", "kerapose.sub.b"]]
    assert private == [("kerapose.c", "kerapose.a._hidden")]


def test_no_import_circles_in_the_package():
    edges, _ = _imports(_modules())
    assert len(edges) > 60
    assert _cycles(edges) == []


def test_no_private_names_used_across_modules():
    _, private = _imports(_modules())
    assert private == []


def test_families_declare_everything_and_names_are_unique():
    names = [n for fam in FAMILIES for n in fam.builders]
    assert len(names) == len(set(names)) == len(model_names())
    for fam in FAMILIES:
        assert fam.builders and fam.model_types and fam.size_multiple > 0
        h, w = fam.info_input_size
        assert h % fam.size_multiple == 0 and w % fam.size_multiple == 0
        if fam.default_input_size is not None:
            assert all(v % fam.size_multiple == 0 for v in fam.default_input_size)
        assert fam.recipe is None or fam.recipe.model_names
    codecs = [c for fam in FAMILIES for c in fam.oracles]
    assert len(codecs) == len(set(codecs))


@pytest.mark.parametrize("name", model_names())
def test_info_runs_for_every_builtin_name_with_its_family_default_size(name, capsys):
    assert main(["info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    fam = family_named(name)
    if name != "prn":  # the PRN's input is its fixed 56x36 RoI
        assert tuple(info["input_size"]) == fam.info_input_size
    assert info["params"] > 0 and info["macs"] > 0
    assert sum(m["params"] for m in info["modules"]) <= info["params"]


# The cheapest built-in name of each family with an end-to-end graph; a new family adds its own.
EXPORT_NAME = {"multiposenet": "multiposenet-r18", "paf": "paf-mobilenetv2-small", "posedet": "posedet-tiny",
               "strongpose": "strongpose-r18"}


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_export_then_predict_one_builtin_name_per_family(family, coco_mini_root, tmp_path, capsys):
    """``kerapose export NAME`` (its default: end to end) then ``kerapose predict`` on the export."""
    from kerapose.export.metadata import read_metadata

    assert family.name in EXPORT_NAME, f"add the family {family.name!r} to EXPORT_NAME"
    name = EXPORT_NAME[family.name]
    side = str(max(128, 4 * family.size_multiple))  # small: the contract, not the accuracy, is tested here
    out = str(tmp_path / "sm")
    assert main(["export", "--model", name, "--format", "savedmodel", "--input-size", side, side,
                 "--output", out]) == 0
    meta = read_metadata(out)
    assert meta["end_to_end"] is True and meta["family"] == family.name and meta["input_size"] == [int(side)] * 2
    image = str(coco_mini_root / "val2017" / "000000192699.jpg")
    capsys.readouterr()
    assert main(["predict", out, image, "--out", str(tmp_path / "p"), "--no-draw", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 1 and summary["errors"] == []
    assert isinstance(json.load(open(summary["predictions"])), list)
