"""The package's layering, checked on the source: `ray` only under `prime_ray/distributed/`, and every
import of a prime_ray module pointing down the layer order written in README.md's "Layout" section.

Every import counts, at module level or inside a function (`ast.walk` over the whole module), so a lazy
import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prime_ray"


def layer_order(readme: str) -> list[str]:
    """The dotted module names of the Layout list, top to bottom (`cli/` -> `prime_ray.cli`)."""
    section = readme.split("## Layout", 1)[1]
    block = section.split("```", 2)[1]
    entries = []
    for line in block.splitlines():
        match = re.match(r"^  (\S+)", line)  # an entry; its description's continuation lines are indented deeper
        if match:
            entries.append("prime_ray." + match.group(1).rstrip("/").removesuffix(".py").replace("/", "."))
    return entries


ORDER = layer_order((ROOT / "README.md").read_text())


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(module: str) -> int | None:
    """Index in ORDER of the most specific entry holding `module`; None for the package root."""
    holding = [i for i, entry in enumerate(ORDER) if module == entry or module.startswith(entry + ".")]
    return max(holding, key=lambda i: len(ORDER[i])) if holding else None


def imports(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def imports_in(source: str, module_of_source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import; `from a import b` names `a.b` when that is a module."""
    here = module_of_source.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: a package's own name counts as one level
                base = here[: len(here) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.append((node.lineno, child if exists(child) else module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            found.append((node.lineno, node.args[0].value))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_readme_lists_the_layers_and_they_exist():
    assert len(ORDER) >= 10, ORDER
    assert len(set(ORDER)) == len(ORDER), ORDER
    assert [entry for entry in ORDER if not exists(entry)] == []


def test_every_module_has_a_layer():
    root_modules = {"prime_ray", "prime_ray.__main__"}  # the package root and its entry point sit above all
    missing = [str(p.relative_to(ROOT)) for p in SOURCES
               if module_name(p) not in root_modules and layer_of(module_name(p)) is None]
    assert missing == [], f"modules in no entry of README.md's Layout: {missing}"


def test_ray_is_imported_only_in_distributed():
    distributed = PACKAGE / "distributed"
    offenders = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                 for path in SOURCES if distributed not in path.parents
                 for line, module in imports(path) if module == "ray" or module.startswith("ray.")]
    assert offenders == [], "\n".join(offenders)


def test_imports_point_down_the_layer_order():
    upward = []
    for path in SOURCES:
        own = layer_of(module_name(path))
        if own is None:
            continue
        for line, module in imports(path):
            if not module.startswith("prime_ray."):  # `prime_ray` itself: see test_the_root_loads_only_the_spec
                continue
            target = layer_of(module)
            if target is None or target < own:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {ORDER[own]} imports {module}, "
                              f"which is {'not below it' if target is None else 'above it'} in README.md's Layout")
    assert upward == [], "\n".join(upward)


def test_the_root_loads_only_the_spec():
    # Modules import `__version__` from the package root, so at import time it may load only the bottom
    # layer; its facade's other names are imported on first use, inside functions.
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    eager |= {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in eager if m and m.startswith("prime_ray")} <= {"prime_ray.spec"}, eager


@pytest.mark.parametrize(("source", "expected"), [
    ("import ray\n", "ray"),
    ("def f():\n    from ray.serve import handle\n", "ray.serve"),
    ("import importlib\nimportlib.import_module('ray.data')\n", "ray.data"),
    ("from ..spec import JobSpec\n", "prime_ray.spec"),
    ("from prime_ray.evaluation import metrics\n", "prime_ray.evaluation.metrics"),
])
def test_the_checker_sees_every_kind_of_import(source, expected):
    assert expected in [module for _, module in imports_in(source, "prime_ray.data.schema")]


def test_modules_take_the_most_specific_entry():
    assert layer_of("prime_ray.data.schema") == ORDER.index("prime_ray.data")
    assert layer_of("prime_ray.evaluation.metrics") == ORDER.index("prime_ray.evaluation.metrics")
    assert layer_of("prime_ray.evaluation.report") == ORDER.index("prime_ray.evaluation")
    assert layer_of("prime_ray.cli") < layer_of("prime_ray.data")
