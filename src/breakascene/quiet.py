"""Library chatter a user cannot act on, kept off the terminal: for the command line and the Python API alike.

diffusers, transformers and huggingface_hub print progress bars while loading and saving weights, notices at import
("requires torchvision ... falling back"), and deprecation warnings about their own internals. None of it is
something a break-a-scene user can act on. Our own warnings (``SceneWarning`` and other ``UserWarning`` s) and
tqdm bars are untouched, and a variable the user sets explicitly (``TRANSFORMERS_VERBOSITY=info``) wins.
"""

from __future__ import annotations

import os
import warnings

LIBRARIES = r"(diffusers|transformers|huggingface_hub|accelerate|peft|torch)(\.|$)"


def quiet_environment() -> None:
    """Sets the libraries' verbosity variables (unless set already). Must run before they are imported: some
    notices are printed at import time."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def quiet_libraries() -> None:
    """Turns off the libraries' own progress bars and their deprecation warnings (imports them)."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components", "Writing model shards"
    transformers_logging.disable_progress_bar()  # "Loading weights"
    hub_logging.set_verbosity_error()  # "Retrying in 8s [Retry 5/5]"
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
