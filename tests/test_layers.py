"""Imports only go downward, and no module takes another's private names.

Every module under src/slimdump is read with :mod:`ast` (nothing is
imported, so a module that would fail to import is still checked) and every
import in it counts: at the top, inside functions, under ``if
TYPE_CHECKING``.  Each module belongs to a layer (the table below, lowest
first); a layer may import its own modules and those of the layers it lists.
A new module must be given a layer here: an unknown one fails the test.

The second rule: ``from x import _y`` takes a private name of another
module; only a package's own C extension (``_pageclass``, ``_pagepack``:
a ``.c`` file beside the importer) is imported that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "slimdump"

BASE = {"errors", "record", "elf", "notes", "progress", "threadpool", "bitmap", "codecs",
        "__init__"}
TOP = {"cli", "cliargs", "kdumpservice", "__main__"}

# layer -> the layers it may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "sources": {"base", "sources"},
    "kernel": {"base", "sources", "kernel"},
    "triage": {"base", "triage"},
    "writers": {"base", "sources", "writers"},
    "selection": {"base", "sources", "kernel", "writers", "selection"},
    "capture": {"base", "sources", "kernel", "triage", "writers", "selection", "capture"},
    "analysis": {"base", "sources", "kernel", "triage", "analysis"},
    "top": {"base", "sources", "kernel", "triage", "writers", "selection", "capture",
            "analysis", "top"},
}


def layer_of(module: str) -> str | None:
    """The layer of ``slimdump.x.y`` (None: not in the table)."""
    parts = module.split(".")[1:] or ["__init__"]
    head = parts[0]
    if len(parts) == 1 and head in BASE:
        return "base"
    if head in ("sources", "kernel", "triage", "writers", "analysis", "capture"):
        return head
    if len(parts) > 1:
        return None
    if head == "policy":
        return "triage"
    if head == "filtered":
        return "selection"
    if head == "drgn":
        return "analysis"
    if head in TOP or head.startswith("makedumpfile_"):
        return "top"
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_submodule(package: str, name: str) -> bool:
    """``package.name`` is a module of the tree: a .py file, a package or a
    C extension's source."""
    where = SRC.joinpath(*package.split("."))
    return ((where / f"{name}.py").is_file() or (where / name / "__init__.py").is_file()
            or (where / f"{name}.c").is_file())


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of a slimdump module in the
    file: ``names`` are what ``from module import ...`` takes."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base, [alias.name for alias in node.names]))
    return [(line, mod, names) for line, mod, names in found
            if mod == "slimdump" or mod.startswith("slimdump.")]


def targets(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from pkg import mod`` reaches
    ``pkg.mod`` when that is a module, ``pkg`` for any other name."""
    if not names:
        return [module]
    return sorted({f"{module}.{n}" if is_submodule(module, n) else module for n in names})


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer() -> None:
    unknown = [module_name(p) for p in sources() if layer_of(module_name(p)) is None]
    assert not unknown, f"modules missing from the layer table: {unknown}"


def test_imports_go_downward() -> None:
    wrong = []
    for path in sources():
        own = module_name(path)
        mine = layer_of(own)
        if mine is None:
            continue
        for line, module, names in imports(path):
            for target in targets(module, names):
                theirs = layer_of(target)
                if theirs is not None and theirs not in ALLOWED[mine]:
                    wrong.append(f"{path.relative_to(SRC)}:{line}: {own} ({mine}) imports "
                                 f"{target} ({theirs})")
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)


def test_no_private_names_across_modules() -> None:
    wrong = []
    for path in sources():
        own = module_name(path)
        package = own if path.name == "__init__.py" else own.rpartition(".")[0]
        for line, module, names in imports(path):
            for name in names:
                if not name.startswith("_") or name.startswith("__"):
                    continue
                extension = (module == package
                             and (SRC.joinpath(*module.split(".")) / f"{name}.c").is_file())
                if module != own and not extension:
                    wrong.append(f"{path.relative_to(SRC)}:{line}: {own} takes {name} "
                                 f"from {module}")
    assert not wrong, "private names imported from other modules:\n" + "\n".join(wrong)


def test_the_rules_catch_what_they_should() -> None:
    """The table itself: a few imports the rules must refuse and allow."""
    assert layer_of("slimdump.writers.kdump") == "writers"
    assert layer_of("slimdump.codecs") == layer_of("slimdump") == "base"
    assert layer_of("slimdump.makedumpfile_run") == "top"
    assert layer_of("slimdump.policy") == "triage"
    assert "kernel" not in ALLOWED["writers"] and "writers" not in ALLOWED["sources"]
    assert "analysis" not in ALLOWED["capture"] and "writers" not in ALLOWED["kernel"]
    assert targets("slimdump.writers", ["_pagepack"]) == ["slimdump.writers._pagepack"]
    assert targets("slimdump", ["codecs"]) == ["slimdump.codecs"]
    assert targets("slimdump.sources.base", ["Segment"]) == ["slimdump.sources.base"]
