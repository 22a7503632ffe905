"""bitsandbytes only when 8-bit Adam is asked for.

Installed, bitsandbytes prints a paragraph on import (on a CPU machine: "Failed to load CPU gemm_4bit_forward from
kernels-community ..."), and diffusers, transformers and peft import it at start-up whenever it is installed. The
command line therefore hides it (:func:`hide`) before any library is imported, and :func:`load` brings it back
for the one thing that needs it. Whether it is installed is read from the package metadata, never by importing.
"""

from __future__ import annotations

import importlib.metadata
import sys

NAME = "bitsandbytes"


def hide() -> None:
    """Makes ``import bitsandbytes`` fail and libraries' availability checks say "not installed" in this
    process, until :func:`load`. A no-op once it has been imported."""
    sys.modules.setdefault(NAME, None)


def installed() -> bool:
    """Whether bitsandbytes is installed, without importing it."""
    try:
        importlib.metadata.version(NAME)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def load():
    """The bitsandbytes module, imported now (ImportError when it is not installed)."""
    if sys.modules.get(NAME, False) is None:
        del sys.modules[NAME]
    import bitsandbytes

    return bitsandbytes
