"""SIGTERM handling: note the signal, let the loop save at the next step boundary.

TPU VMs (and most schedulers) announce preemption with SIGTERM and allow some seconds
of grace. Saving inside the signal handler could interrupt a step half way; instead the
handler only sets a flag, which the training loop checks between steps.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from absl import logging


class PreemptionWatcher:
    """Context manager that turns SIGTERM (and optionally SIGINT) into a flag.

    Previous handlers are restored on exit. Only usable from the main thread (Python
    installs signal handlers only there); elsewhere it is a no-op watcher.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self.received: int | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.received = signum
        self._event.set()
        logging.warning(
            "Received %s: will save a checkpoint at the next step boundary and exit.",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
