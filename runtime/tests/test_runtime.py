"""The installed runtime, in its own torch-free environment, against a bundle and scores from the full package.

CI (.ci/run) exports the bundle and the full package's scores with the main environment and points
PADIM_RUNTIME_BUNDLE / PADIM_RUNTIME_EXPECTED at them; tests/test_bundle.py covers the same in the
main environment.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

import padim_runtime
from padim_runtime.cli import main

BUNDLE = os.environ.get("PADIM_RUNTIME_BUNDLE")
EXPECTED = os.environ.get("PADIM_RUNTIME_EXPECTED")
needs_bundle = pytest.mark.skipif(not (BUNDLE and EXPECTED), reason="set PADIM_RUNTIME_BUNDLE and PADIM_RUNTIME_EXPECTED")


def test_the_environment_has_no_torch_timm_or_scipy() -> None:
    assert all(importlib.util.find_spec(name) is None for name in ("torch", "timm", "scipy"))


def test_the_runtime_never_imports_padim() -> None:
    """torch-padim builds on the runtime, never the other way round (padim pulls in torch)."""
    found = []
    for path in sorted(Path(padim_runtime.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "padim"]
    assert found == []


@needs_bundle
def test_scores_equal_the_full_packages(tmp_path: Path) -> None:
    expected = json.loads(Path(EXPECTED).read_text())
    results = padim_runtime.load(BUNDLE).predict(expected["images"])
    scores = np.array([r.score for r in results])
    want = np.array(expected["scores"])
    assert np.abs(scores - want).max() <= 1e-4 * np.abs(want).max()
    assert [r.defective for r in results] == expected["decisions"]


@needs_bundle
def test_command_line_writes_the_tables_and_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    images = json.loads(Path(EXPECTED).read_text())["images"]
    assert main(["predict", BUNDLE, *images[:3], "-o", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "scores.json").read_text())["images"]
    assert [r["image"] for r in rows] == images[:3]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert main(["predict", BUNDLE, str(tmp_path / "bad.png"), "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.png" in err[0]
