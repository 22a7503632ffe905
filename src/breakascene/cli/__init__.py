"""The command line: ``break-a-scene <command>``, one module per command over the library's functions."""

from .main import main

__all__ = ["main"]
