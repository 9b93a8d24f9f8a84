"""percli: perception research methods from one command line."""

__version__ = "0.1.0"
