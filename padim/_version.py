"""The one source of the version: pyproject.toml and padim.__version__ read it from here."""

__version__ = "0.1.0"
