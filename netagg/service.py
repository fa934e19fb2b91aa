"""A serve-forever loop that can also run on a background thread (the switch, the relay), and the
signals that stop it."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Self

__all__ = ["BackgroundService", "stop_on_signals"]

log = logging.getLogger(__name__)


def stop_on_signals(stop: Callable[[], object]) -> None:
    """SIGINT/SIGTERM call ``stop`` (only from the main thread, where Python allows handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


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
