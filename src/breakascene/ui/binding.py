"""Where the web app's server listens: loopback unless the user asks, with a warning when it is not."""

from __future__ import annotations

import ipaddress

from ..errors import ConfigError

LOOPBACK_NAMES = ("localhost",)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def launch_options(host: str | None = None, port: int = DEFAULT_PORT, share: bool = False) -> tuple[dict, list[str]]:
    """The keyword arguments for ``Blocks.launch`` and the warnings to print before launching.

    The address is always passed explicitly, so gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SHARE``
    environment variables can never widen it: the server listens on 127.0.0.1 unless ``host`` (``--host``)
    or ``share`` (``--share``) says otherwise.

    Raises:
        ConfigError: a port outside 1..65535 or an empty host.
    """
    host = DEFAULT_HOST if host is None else host.strip()
    if not host:
        raise ConfigError("--host is empty; leave it out to listen on 127.0.0.1 only")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"--port {port} must be between 1 and 65535")
    warnings = []
    if not is_loopback(host):
        warnings.append(
            f"listening on {host}: anyone who can reach this machine on port {port} can use the app, read "
            "your runs and start trainings (there is no login); leave out --host to stay on 127.0.0.1"
        )
    if share:
        warnings.append(
            "--share makes a public *.gradio.live link: anyone with the link can use the app and read your runs"
        )
    return {"server_name": host, "server_port": int(port), "share": bool(share)}, warnings
