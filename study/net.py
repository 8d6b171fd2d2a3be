"""Small network helpers of the driver side: a free loopback port, waiting for a server's /health."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

from trainables.errors import ConfigError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    """Poll ``url``/health until it answers; ConfigError when ``server`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            return
        except (urllib.error.URLError, ConnectionError) as error:
            if server.poll() is not None:
                raise ConfigError(f"server {url} exited with code {server.returncode} (is port "
                                  f"{url.rsplit(':', 1)[-1]} free?)") from None
            if time.monotonic() > deadline:
                raise ConfigError(f"server at {url} not healthy after {timeout:.0f} s: {error}") from None
            time.sleep(0.5)
