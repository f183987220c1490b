"""The package version (one place: truncflow.__version__ and the records of a run read it)."""
__version__ = "0.2.0"
