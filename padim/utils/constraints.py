"""Tables of what every parameter may be, one per estimator, and the one function that checks them.

As in scikit-learn (``_parameter_constraints``), each estimator class declares, for every constructor
parameter, the rules one of which its value must satisfy, and a few checks of what no single value
shows (a crop inside its image, an engine on its device, a folder that exists), each raising its own
one-line error. ``validate_params`` runs both for any estimator; ``check_params`` checks a dict of
values against a table (the model file's, and the parameters ``PaDiM.load`` is given).

A value a user or a model file can set is checked here before anything is allocated or read: a
header edited to sigma 1e6 or an image size of 100000 is refused in one line, not obeyed.
The bounds are generous limits of what this implementation handles, not recommendations (the
paper's values are in padim.paper).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from padim.errors import InputError, ModelFileError, PadimEnvironmentError

MAX_SIDE = 4096  # pixels per side of the backbone input (the paper uses 224-256)
MIN_SIDE = 32  # the deepest usual tap (stride 16-32) still gives a feature grid
MAX_FEATURES = 8192  # embedding channels kept (wide_resnet50_2 has 1792 in layer1-3)
MAX_BATCH = 4096
MAX_SIGMA = 64.0  # pixels; the paper's is 4, the Gaussian's radius is 4 sigma
MIN_EPS, MAX_EPS = 1e-8, 1e4  # below 1e-8 the inverse factors overflow float32/float16 scores
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024
MAX_LAYERS = 16


@dataclass(frozen=True)
class Rule:
    """One acceptable kind of value: a test and the words that describe it.

    Parameters
    ----------
    accepts : callable
        True for a value of this kind.
    text : str
        What the kind is, completing "<name> must be ..." in the error.

    Attributes
    ----------
    accepts, text
        As given.
    """

    accepts: Callable[[Any], bool]
    text: str


def _is_int(value: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def integer(low: int, high: int) -> Rule:
    """An integer in [low, high]."""
    return Rule(lambda v: _is_int(v) and low <= int(v) <= high, f"an integer in [{low}, {high}]")


def real(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite number between low and high, each end open or closed."""
    def ok(v: Any) -> bool:
        if not _is_real(v):
            return False
        x = float(v)
        return (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    return Rule(ok, f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def one_of(*options: Any) -> Rule:
    """One of these values."""
    return Rule(lambda v: isinstance(v, (str, type(None))) and v in options, "one of " + ", ".join(map(repr, options)))


def multiple_of(step: int, why: str) -> Rule:
    """A positive integer multiple of step (`why` says what step is)."""
    return Rule(lambda v: _is_int(v) and int(v) >= step and int(v) % step == 0, f"a multiple of {step} ({why})")


NONE = Rule(lambda v: v is None, "None")
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str) and bool(v.strip()) and "\n" not in v, "a non-empty name")
PATH = Rule(lambda v: isinstance(v, (str, os.PathLike)) and bool(str(v).strip()), "a file path")
POSITIVE_INT = Rule(lambda v: _is_int(v) and int(v) >= 1, "a positive integer")
POSITIVE = Rule(lambda v: _is_real(v) and float(v) > 0, "positive")
NON_NEGATIVE = Rule(lambda v: _is_real(v) and float(v) >= 0, ">= 0")


def _is_size(v: Any) -> bool:
    """An int side or a (height, width) pair of sides in [MIN_SIDE, MAX_SIDE]."""
    sides = [v] if not isinstance(v, Sequence) or isinstance(v, str) else list(v)
    return len(sides) in (1, 2) and all(_is_int(s) and MIN_SIDE <= int(s) <= MAX_SIDE for s in sides)


def _is_layers(v: Any) -> bool:
    """A non-empty list of distinct, non-empty module names."""
    return (isinstance(v, (list, tuple)) and 1 <= len(v) <= MAX_LAYERS and len(set(v)) == len(v)
            and all(TEXT.accepts(name) for name in v))


SIZE = Rule(_is_size, f"an integer or (height, width) of integers in [{MIN_SIDE}, {MAX_SIDE}]")
SIDE = integer(1, MAX_SIDE)
LAYERS = Rule(_is_layers, f"1 to {MAX_LAYERS} distinct, non-empty module names")
FRACTION = real(0.0, 1.0, low_open=True, high_open=True)

Constraints = dict[str, list[Rule]]

# Parameters PaDiM and the paper's baselines share, with the same meaning.
COMMON_CONSTRAINTS: Constraints = {
    "backbone": [TEXT],
    "image_size": [SIZE],
    "crop_size": [NONE, SIZE],
    "seed": [integer(0, MAX_SEED)],
    "device": [TEXT],
    "batch_size": [integer(1, MAX_BATCH)],
    "weights": [NONE, PATH],
    "workers": [NONE, integer(0, 64)],
    "verbose": [BOOL],
}

# What each PaDiM parameter may be: any one of its rules.
PADIM_CONSTRAINTS: Constraints = {
    **COMMON_CONSTRAINTS,
    "layers": [NONE, LAYERS],
    "n_features": [NONE, one_of("all"), integer(1, MAX_FEATURES)],
    "reduction": [one_of("random", "pca")],
    "eps": [real(MIN_EPS, MAX_EPS)],
    "sigma": [real(0.0, MAX_SIGMA)],
    "holdout": [real(0.0, 1.0, high_open=True)],
    "fpr": [FRACTION],
    "engine": [TEXT],
    "threads": [NONE, integer(1, MAX_THREADS)],
    "max_pixels": [NONE, integer(1, 2**40)],
}

# Values only a model file sets (checked on load, beside the constructor's parameters).
FILE_CONSTRAINTS: Constraints = {
    "n_samples_seen": [integer(1, 2**53)],
    "feature_side": [integer(1, MAX_SIDE)],
    "channels": [integer(1, 65536)],
    "precision_dtype": [one_of(None, "float32", "float16")],
    "statistics": [BOOL],
}

THRESHOLD = real(0.0, 3.4e38)  # scores are distances: >= 0 and finite


@dataclass(frozen=True)
class Check:
    """A test of parameters together (or of the machine) that raises its own one-line error.

    Parameters
    ----------
    test : callable
        Called with the named parameters' values, in order; raises a PadimError to refuse them.
    names : tuple of str
        The parameters it reads.

    Attributes
    ----------
    test, names
        As given.
    """

    test: Callable[..., object]
    names: tuple[str, ...]

    def run(self, params: dict[str, Any]) -> None:
        """Call the test with the named parameters' values."""
        self.test(*(params[name] for name in self.names))


def check_value(name: str, value: Any, rules: list[Rule], where: str = "") -> None:
    """Refuse a value no rule accepts, in one line naming the parameter (and the file it came from, if any)."""
    if any(rule.accepts(value) for rule in rules):
        return
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    prefix = f"{where}: " if where else ""
    error = ModelFileError if where else InputError
    raise error(f"{prefix}{name} must be {' or '.join(r.text for r in rules)}, got {shown}")


def check_params(params: dict[str, Any], constraints: Constraints, where: str = "") -> None:
    """Check every parameter the table knows; unknown names are left to the caller."""
    for name, value in params.items():
        if name in constraints:
            check_value(name, value, constraints[name], where)


def validate_params(estimator: Any, *, checks: bool = True) -> None:
    """Check an estimator's parameters against its class's `_parameter_constraints`, then its `_parameter_checks`."""
    constraints: Constraints = estimator._parameter_constraints
    params = {name: getattr(estimator, name) for name in constraints}
    check_params(params, constraints)
    for check in estimator._parameter_checks if checks else ():
        check.run(params)


class CheckedParameters:
    """Base of the estimators: `_check_params` checks the parameters against the class's tables.

    Attributes
    ----------
    _parameter_constraints : dict of str to list of Rule
        For every constructor parameter, the rules one of which its value must satisfy.
    _parameter_checks : tuple of Check
        The tests of several parameters together (or of the machine), run after the table.
    """

    _parameter_constraints: Constraints = {}
    _parameter_checks: tuple[Check, ...] = ()

    def _check_params(self) -> None:
        """Reject parameter values that cannot work, before any image is read."""
        validate_params(self)


def gaussians_bytes(size: tuple[int, int], stride: int, dim: int) -> int:
    """Bytes a fit holds for its Gaussians: float64 means and packed scatters, float32 factors, per position."""
    positions = math.ceil(size[0] / stride) * math.ceil(size[1] / stride)
    return positions * (8 * dim + 8 * dim * (dim + 1) // 2 + 4 * dim * dim)


def physical_memory() -> int | None:
    """This machine's RAM in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(size: tuple[int, int], stride: int, dim: int) -> None:
    """Refuse, before allocating, Gaussians larger than this machine's memory (e.g. a huge image size)."""
    need, have = gaussians_bytes(size, stride, dim), physical_memory()
    if have is not None and need > have:
        raise PadimEnvironmentError(f"image size {size[0]}x{size[1]} with {dim} features needs about {need / 2**30:.0f} GiB for "
                         f"the Gaussians, more than this machine's {have / 2**30:.0f} GiB: use a smaller image size, "
                         f"crop size or n_features")


def check_threshold(name: str, value: float | None, where: str = "") -> float | None:
    """A threshold: None (not given) or a finite number >= 0; NaN would accept every part."""
    if value is not None:
        check_value(name, value, [THRESHOLD], where)
        return float(value)
    return None
