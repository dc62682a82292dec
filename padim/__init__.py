"""PaDiM: patch distribution modeling for image anomaly detection and localization."""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # GNU OpenMP (torch's CPU threads) spins 300,000 times before a waiting thread sleeps; beside
    # another CPU job those spins steal the cores: predict kept 0.2x of its quiet speed next to a
    # 2-thread job, 0.36x with 10,000, at the same quiet speed. Read once, when torch loads.
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from padim._version import __version__
from padim.errors import (ImageTooLarge, InputError, ModelFileError, NotFittedError, PadimEnvironmentError, PadimError,
                          PadimWarning)
from padim.model import PaDiM
from padim.prediction import Prediction

__all__ = ["ImageTooLarge", "InputError", "ModelFileError", "NotFittedError", "PaDiM", "PadimEnvironmentError",
           "PadimError", "PadimWarning", "Prediction", "__version__"]
