"""padim-runtime: score images with a torch-padim inference bundle, on numpy, Pillow and a CPU engine."""

from padim_runtime.bundle import BundleError
from padim_runtime.predictor import Predictor, Result, load

__version__ = "0.1.0"
__all__ = ["BundleError", "Predictor", "Result", "load", "__version__"]
