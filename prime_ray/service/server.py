"""Serving the gateway: in the foreground (`prime-ray gateway`) or in a thread of this process.

The thread form embeds a gateway in a notebook or another program (and in the tests): it is the
same app on a real uvicorn server, only without a process of its own.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from prime_ray.service.app import create_app
from prime_ray.service.settings import GatewaySettings


def serve(settings: GatewaySettings) -> None:
    """Run the gateway until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


class BackgroundServer:
    """`with BackgroundServer(app, port) as url:` serves `app` on 127.0.0.1:port from a daemon thread."""

    def __init__(self, app: FastAPI, port: int, host: str = "127.0.0.1"):
        self.app = app
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="prime-ray-gateway", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
