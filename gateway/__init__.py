"""Daemon, scheduling, configuration and CLI: the shell that wires the libraries together."""

__version__ = "0.1.0"
__all__ = ["__version__"]
