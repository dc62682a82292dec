"""PaDiM: patch distribution modeling for image anomaly detection and localization."""

from padim.errors import PadimError
from padim.model import PaDiM, Prediction

__version__ = "0.1.0"
__all__ = ["PaDiM", "PadimError", "Prediction", "__version__"]
