"""Loading by Hub id without waiting on a network that is not there.

When the Hub cannot be reached, huggingface_hub retries each request five times with growing pauses: about a
minute and two dozen "Retrying in 8s" lines before the error. So before a Hub id is loaded, :func:`hub_options`
asks once (per process) whether the Hub's host answers within a few seconds. If it does, the id loads as usual
(downloaded once, then from the cache). If it does not, or ``HF_HUB_OFFLINE`` is set, the id is loaded from the
local cache only, which either works at once or fails at once, and :func:`not_downloadable` says what to do.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError

CONNECT_TIMEOUT = 3.0  # seconds to wait for the Hub's host to accept a connection
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is written like a Hub repo id, ``owner/name`` (not whether that repo exists)."""
    return bool(_REPO_ID.match(name))


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def hub_reachable(endpoint: str | None = None, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether the Hub's host (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection within ``timeout``."""
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:  # no DNS, refused, unreachable, timed out
        return False


def _through_a_proxy() -> bool:
    """A proxy is configured: a direct connection may fail where the proxied one works, so none is tried."""
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                  "ALL_PROXY", "all_proxy"))


def hub_options(model: str | None = None) -> dict:
    """Keyword arguments for ``from_pretrained``/``from_single_file`` of ``model``: ``{}`` for a local folder or file,
    or when the Hub answers (or a proxy is configured); else ``{"local_files_only": True}`` (use the cache, never
    wait on retries)."""
    if model is not None and Path(model).expanduser().exists():
        return {}
    if _offline_requested() or not (_through_a_proxy() or hub_reachable()):
        return {"local_files_only": True}
    return {}


def not_downloadable(model: str, flag: str, what: str = "model") -> ConfigError:
    """The one line for a Hub id that is neither in the local cache nor downloadable now."""
    why = "HF_HUB_OFFLINE is set" if _offline_requested() else "the Hugging Face Hub cannot be reached from here"
    return ConfigError(
        f"the {what} {model} could not be downloaded ({why}) and is not in the local cache; download it once "
        f"where there is network (`hf download {model}`), or give {flag} a local folder or file"
    )
