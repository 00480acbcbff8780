"""Layer test: no module under ``cloudlab/`` imports a module of a higher layer, and no workflow
imports another workflow.

``LAYERS`` below is the one place the order is declared. Every import of ``cloudlab.*`` is found
with :mod:`ast` (module level and inside functions, absolute and relative), so a lazy import that
runs up a layer is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "cloudlab"

#: Layers from the bottom up. Each maps a layer name to the top-level modules or packages of
#: ``cloudlab`` in it (``""`` is the package itself, ``cloudlab/__init__.py``). A module may import
#: its own layer and the layers below; within the ``workflows`` layer a package may import only
#: itself (a chain of workflows belongs in ``pipelines``).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "base",
        frozenset(
            {
                "",
                "errors",
                "storage",
                "backend",
                "cluster",
                "chunking",
                "recipes",
                "sky",
                "tess_detector",
                "_tasks",
            }
        ),
    ),
    ("fits", frozenset({"fits"})),
    ("io", frozenset({"io"})),
    ("workflows", frozenset({"cutouts", "timelag", "backdrop", "dre", "astronet"})),
    ("pipelines", frozenset({"pipelines", "simulate"})),
    ("faces", frozenset({"commands", "cli"})),
    # loopback servers for tests and benchmarks; nothing in the library imports them
    ("testing", frozenset({"testing"})),
)

#: layers whose members are independent of one another: each may import only itself
ISOLATED_LAYERS = frozenset({"workflows"})

RANK = {layer: rank for rank, (layer, _) in enumerate(LAYERS)}
LAYER_OF = {member: layer for layer, members in LAYERS for member in members}


def top_level(module: str) -> str:
    """The top-level part of a dotted ``cloudlab`` module name (``""`` for ``cloudlab`` itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a file under the package directory ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve_from(path: Path, root: Path, node: ast.ImportFrom) -> str:
    """Absolute module named by a ``from ... import`` statement in ``path``."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def submodule_exists(module: str, root: Path) -> bool:
    """Whether ``module`` (dotted, under ``cloudlab``) is a file or package in the source tree."""
    relative = Path(*module.split("."))
    parent = root.parent
    return (parent / relative).with_suffix(".py").is_file() or (
        parent / relative / "__init__.py"
    ).is_file()


def cloudlab_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every ``cloudlab`` module that ``path`` imports, anywhere in it.

    ``from cloudlab.x import y`` counts as an import of ``cloudlab.x.y`` when ``y`` is a module,
    else of ``cloudlab.x``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(path, root, node)
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                is_module = submodule_exists(candidate, root)
                found.append((node.lineno, candidate if is_module else source))
    return [
        (line, module)
        for line, module in found
        if module == "cloudlab" or module.startswith("cloudlab.")
    ]


def layer_violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """One message for every import under ``root`` that runs up a layer or across workflows."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        importer_top = top_level(importer)
        importer_layer = LAYER_OF.get(importer_top)
        if importer_layer is None:
            problems.append(
                f"{importer} ({path}) is in no layer: add {importer_top!r} to LAYERS in "
                "tests/test_layers.py"
            )
            continue
        for line, imported in cloudlab_imports(path, root):
            imported_top = top_level(imported)
            imported_layer = LAYER_OF.get(imported_top)
            where = f"{path.relative_to(root.parent)}:{line}: {importer}"
            if imported_layer is None:
                problems.append(f"{where} imports {imported}, which is in no layer")
            elif RANK[imported_layer] > RANK[importer_layer]:
                problems.append(
                    f"{where} (layer {importer_layer!r}) imports {imported} "
                    f"(layer {imported_layer!r}), which is above it"
                )
            elif (
                imported_layer == importer_layer
                and importer_layer in ISOLATED_LAYERS
                and imported_top != importer_top
            ):
                problems.append(
                    f"{where} (layer {importer_layer!r}) imports {imported} "
                    f"(layer {imported_layer!r}): one workflow must not import another; "
                    "move the shared code down a layer or chain them in a pipeline"
                )
    return problems


def test_layer_table_names_every_member_once():
    members = [member for _, group in LAYERS for member in group]
    assert len(members) == len(set(members))


def test_no_import_runs_up_a_layer():
    problems = layer_violations()
    assert not problems, "imports that break the layer order:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from cloudlab.simulate.galaxies import sersic_stamp\n", "(layer 'pipelines')"),
        ("def f():\n    from cloudlab.cli import main\n", "(layer 'faces')"),
        ("from ..timelag import kernels\n", "'workflows'"),
        ("import cloudlab.io.tess\n", None),
    ],
)
def test_checker_catches_upward_imports(tmp_path, source, expected):
    """The checker itself: a planted upward import in a fake tree is reported, with both layers."""
    root = tmp_path / "cloudlab"
    for sub in ("io", "dre", "simulate", "timelag"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "cli.py").write_text("")
    (root / "simulate" / "galaxies.py").write_text("")
    (root / "timelag" / "kernels.py").write_text("")
    (root / "io" / "tess.py").write_text("")
    (root / "dre" / "models.py").write_text(source)
    problems = layer_violations(root)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert "cloudlab.dre.models" in problems[0]
        assert "(layer 'workflows')" in problems[0]
        assert expected in problems[0]
