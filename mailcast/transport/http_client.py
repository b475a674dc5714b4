"""One HTTP client per worker process, shared by every connection and thread: keep-alive
connections (HTTP/2 where the server offers it and ``h2`` is installed) to token endpoints and
HTTP APIs. ``httpx.Client`` is thread-safe; a process started by fork gets its own."""

from __future__ import annotations

import importlib.util
import os
import threading

import httpx

__all__ = ["reset_shared_client", "shared_client"]

_lock = threading.Lock()
_client: httpx.Client | None = None
_pid = 0


def shared_client() -> httpx.Client:
    """This process's client (made on first use)."""
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():
            _client = httpx.Client(
                http2=importlib.util.find_spec("h2") is not None,
                timeout=httpx.Timeout(30.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                follow_redirects=False,
            )
            _pid = os.getpid()
        return _client


def reset_shared_client() -> None:
    """Close this process's client; the next ``shared_client()`` makes a new one (tests change
    the trusted certificates with SSL_CERT_FILE, which a client reads when it is made)."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        client.close()
