"""The package's layers: building blocks (data, networks, losses, metrics, transforms, fields) never import the
engine or the protocols, and nothing in the installed package imports the repository's benchmarks/ scripts."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cover3d"
BENCHMARKS = PACKAGE.parent / "benchmarks"
BUILDING_BLOCKS = ("data", "networks", "losses", "metrics", "transforms", "fields.py", "errors.py")
UPPER_LAYERS = ("cover3d.engine", "cover3d.protocols")


def modules(*names: str) -> list[Path]:
    """The ``.py`` files of these packages / modules of cover3d (all of cover3d without names)."""
    roots = [PACKAGE / name for name in names] or [PACKAGE]
    return sorted(p for root in roots for p in ([root] if root.suffix == ".py" else root.rglob("*.py")))


def imported_modules(path: Path) -> set[str]:
    """Every module the cover3d module ``path`` imports, anywhere in the file."""
    return imports_of(path.read_text(encoding="utf-8"), ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]))


def imports_of(source: str, package: str) -> set[str]:
    """Every module (and imported name, as ``module.name``) that ``source``, a module of ``package``, imports, at
    any depth (inside functions too), relative imports resolved to absolute names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_building_blocks_import_neither_the_engine_nor_the_protocols():
    offending = {
        str(path.relative_to(PACKAGE.parent)): sorted(m for m in imported_modules(path) if m.startswith(UPPER_LAYERS))
        for path in modules(*BUILDING_BLOCKS)
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_package_never_imports_benchmarks():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} | {"benchmarks"}
    offending = {
        str(path.relative_to(PACKAGE.parent)): sorted(m for m in imported_modules(path) if m.split(".")[0] in scripts)
        for path in modules()
    }
    assert {k: v for k, v in offending.items() if v} == {}
    assert not [p for p in modules() if "benchmarks" in p.read_text(encoding="utf-8") and "sys.path" in p.read_text(encoding="utf-8")]


def test_the_import_parser_sees_every_form_of_import():
    """The checks above are only as good as :func:`imports_of`: it must see every form of import."""
    source = (
        "import cover3d.engine.trainer as t\n"
        "from ..engine import RunLock\n"
        "from .readers import load\n"
        "def late():\n"
        "    from cover3d.protocols import label_efficiency\n"
        "    import label_efficiency\n"
    )
    assert imports_of(source, "cover3d.data") >= {
        "cover3d.engine.trainer", "cover3d.engine.RunLock", "cover3d.data.readers.load",
        "cover3d.protocols.label_efficiency", "label_efficiency"}
    assert "cover3d.engine.RunLock" in imported_modules(PACKAGE / "protocols" / "label_efficiency.py")


def torch_load_calls(source: str) -> int:
    """Number of ``torch.load(...)`` calls in ``source``."""
    return sum(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
               for node in ast.walk(ast.parse(source)))  # fmt: skip


def test_every_weights_file_is_read_by_the_one_safe_loader():
    """``cover3d.networks.weights.load_weights_only`` is the one place that calls ``torch.load``: its refusal of
    files holding pickled objects (one line naming the global) then covers the package and the benchmarks."""
    loader = PACKAGE / "networks" / "weights.py"
    files = [p for p in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").rglob("*.py")] if p != loader]
    assert {str(p.relative_to(PACKAGE.parent)) for p in files if torch_load_calls(p.read_text(encoding="utf-8"))} == set()
    assert torch_load_calls(loader.read_text(encoding="utf-8")) == 1
    assert torch_load_calls("import torch\nstate = torch.load(path, weights_only=True)\n") == 1
