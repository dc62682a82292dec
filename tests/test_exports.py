"""padim.__all__ is exactly the public surface, the version has one source, the runtime pin matches the runtime."""

from importlib import metadata
from pathlib import Path

import pytest

import padim
import padim.errors
import padim_runtime

ROOT = Path(__file__).resolve().parents[1]


def _public(module) -> set[str]:
    """Names a module binds at its top level that do not start with an underscore, less submodules."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and type(value).__name__ != "module"}


def test_all_lists_exactly_the_public_names():
    assert set(padim.__all__) - {"__version__"} == _public(padim)
    assert len(padim.__all__) == len(set(padim.__all__))


def test_every_error_and_warning_is_exported_from_the_top():
    assert set(padim.errors.__all__) <= set(padim.__all__)
    for name in padim.errors.__all__:
        assert getattr(padim, name) is getattr(padim.errors, name)


def test_errors_form_one_hierarchy():
    kinds = [padim.NotFittedError, padim.ModelFileError, padim.InputError, padim.PadimEnvironmentError]
    assert all(issubclass(kind, padim.PadimError) for kind in kinds)
    assert issubclass(padim.ImageTooLarge, padim.InputError)
    assert issubclass(padim.PadimWarning, UserWarning) and not issubclass(padim.PadimWarning, padim.PadimError)


def test_installed_version_is_the_package_version():
    assert metadata.version("torch-padim") == padim.__version__


def test_the_runtime_pin_is_the_runtime_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.startswith("padim-runtime")]
    assert pins == [f"padim-runtime=={padim_runtime.__version__}"]
