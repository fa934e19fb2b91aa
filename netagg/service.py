"""A serve-forever loop that can also run on a background thread (the switch, the relay)."""

from __future__ import annotations

import threading
from typing import Self

__all__ = ["BackgroundService"]


class BackgroundService:
    """Subclasses implement :meth:`serve_forever`, which returns once :attr:`_stop` is set."""

    _thread_name = "netagg-service"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve on a background thread (for tests and embedding); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to end and wait for it (if it runs on our thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
