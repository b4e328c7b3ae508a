"""The package version, importable without anything else of rftbench."""

__version__ = "0.1.0"
