"""The package's layout holds: imports go one way down the data flow, and no module grows past ~400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "padim"

# docs/architecture.md's picture, top to bottom: a module may import its own layer and those above it.
LAYERS = [
    ["padim._version", "padim.paper", "padim.errors", "padim.utils"],
    ["padim.data", "padim.images"],
    ["padim.backbone", "padim.torch_fast", "padim.embedding", "padim.engine"],
    ["padim.gaussian", "padim.staircase", "padim.frame"],
    ["padim.scoring", "padim.calibration"],
    ["padim.network", "padim.lanes", "padim.prediction", "padim.fitting", "padim.modelfile", "padim.plan", "padim.model",
     "padim.distributed"],
    ["padim.baselines", "padim.evaluation", "padim.reporting", "padim.deployment"],
    ["padim.cli", "padim.__main__", "padim"],
]
MAX_LINES = 420


def _module_name(path: Path) -> str:
    """Dotted name of a file under padim/."""
    parts = ("padim", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    """Index of the most specific layer entry that contains the module."""
    matches = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every padim import in a file, at any depth (lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"padim.{a.name}" for a in node.names] if node.module == "padim" else [node.module]
            found += [(node.lineno, n) for n in names]
    return [(line, name) for line, name in found if name.split(".")[0] == "padim"]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert [str(p) for p in SOURCES if _layer(_module_name(p)) is None] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_data_flow(path):
    here = _layer(_module_name(path))
    upward = [f"line {line}: {name}" for line, name in _imports(path) if (_layer(name) or 0) > here]
    assert upward == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_about_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
