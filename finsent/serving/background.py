"""An app on 127.0.0.1 in a background thread: for tests, benchmarks and a stage that serves a local teacher."""
from __future__ import annotations

import time


class BackgroundServer:
    """Run an app on 127.0.0.1 (a free port) in a thread: ``with BackgroundServer(app) as url: ...``
    gives ``http://127.0.0.1:PORT/v1`` (tests, benchmarks, and a stage that serves a local teacher)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
        self.host = host

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}/v1"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
