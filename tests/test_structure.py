"""The layers import downwards only: read off the source with ``ast``, not by convention.

contract (``grove.exceptions``, ``grove.caches``, its validation and configuration) →
rule layer (``grove.caches.atomic``) → handlers (one module or package each, named by the
``grove.caches`` entry points) → command line (``grove.cli``). No handler imports another
handler, and neither the contract nor the rule layer imports a handler or the command
line.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src"

CONTRACT_AND_RULES = (
    "grove.exceptions",
    "grove.caches",
    "grove.caches.validation",
    "grove.caches.configuration",
    "grove.caches.atomic",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in SOURCE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in it (functions included), made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # `from grove.caches import local_file` imports the submodule.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _handler_of(module: str, handlers: set[str]) -> str | None:
    for handler in handlers:
        if module == handler or module.startswith(handler + "."):
            return handler
    return None


def _handlers() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    points = project["project"]["entry-points"]["grove.caches"].values()
    return {point.partition(":")[0] for point in points}


def test_the_entry_points_name_modules_that_exist() -> None:
    modules = _modules()
    assert _handlers() <= set(modules)


@pytest.mark.parametrize(
    "name", sorted(name for name in _modules() if _handler_of(name, _handlers()))
)
def test_no_handler_imports_another_handler(name: str) -> None:
    handlers = _handlers()
    own = _handler_of(name, handlers)
    foreign = {
        module
        for module in _imports(name, _modules()[name])
        if _handler_of(module, handlers) not in (None, own)
    }
    assert not foreign, f"{name} (handler {own}) imports {sorted(foreign)}"


@pytest.mark.parametrize("name", CONTRACT_AND_RULES)
def test_contract_and_rule_layer_import_no_handler_and_no_command_line(name: str) -> None:
    handlers = _handlers()
    below = {
        module
        for module in _imports(name, _modules()[name])
        if _handler_of(module, handlers) is not None
        or module == "grove.cli"
        or module.startswith("grove.cli.")
    }
    assert not below, f"{name} imports {sorted(below)}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The negative control: an import the rules forbid is found, relative ones too."""
    planted = tmp_path / "grove" / "caches" / "local_file" / "naming.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from ..redis import Handler\nimport grove.cli\n", encoding="utf-8")
    found = _imports("grove.caches.local_file.naming", planted)
    assert "grove.caches.redis" in found and "grove.cli" in found
    assert _handler_of("grove.caches.redis.Handler", _handlers()) == "grove.caches.redis"
