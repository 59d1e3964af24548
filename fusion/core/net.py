"""A free TCP port, for the servers Fusion starts (the embedded Prefect API, Ray Serve's side ports,
LightGBM's network on Dask workers) and for the benchmarks and tests that start servers."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at `host` now ("" = every interface of this machine), chosen by the OS.
    Another process may take it before the caller binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
