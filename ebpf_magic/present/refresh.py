"""The refresh loop a live view owns: one background thread, paused, resumed and stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Refresher:
    """Calls ``step()`` every :attr:`interval` seconds on a thread of its own, from
    :meth:`start` until :meth:`stop` or until ``alive()`` turns false.

    An exception of a kind in ``errors`` goes to ``on_error`` and the loop carries on
    while ``alive()``. :meth:`stop` returns once the thread has ended (within one wake-up).
    """

    def __init__(self, step: Callable[[], object], interval: float, name: str, *,
                 alive: Callable[[], bool] = lambda: True,
                 on_error: Callable[[Exception], None] = lambda _e: None,
                 errors: tuple[type[Exception], ...] = (OSError,),
                 minimum: float = 0.05) -> None:
        self.step, self.name, self.alive = step, name, alive
        self.on_error, self.errors, self.minimum = on_error, errors, minimum
        self.interval = max(minimum, float(interval))
        self.paused = False
        self.closed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once; again after it ended by itself)."""
        if self.live or self.closed:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self.closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self.closed or not self.alive():
                break
            if self.paused:
                continue
            try:
                self.step()
            except self.errors as e:
                self.on_error(e)
                if not self.alive():
                    break

    def set_interval(self, seconds: float) -> None:
        """Refresh every ``seconds`` (at least :attr:`minimum`), from now on."""
        self.interval = max(self.minimum, float(seconds))
        self._wake.set()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake.set()

    def stop(self) -> None:
        """End the loop; returns once the thread has ended."""
        self.closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class Refreshed:
    """What a live model shows of the :class:`Refresher` it owns (``self.refresher``)."""

    refresher: Refresher

    @property
    def interval(self) -> float:
        return self.refresher.interval

    @property
    def live(self) -> bool:
        return self.refresher.live

    @property
    def paused(self) -> bool:
        return self.refresher.paused

    @property
    def closed(self) -> bool:
        return self.refresher.closed

    def set_interval(self, seconds: float) -> None:
        self.refresher.set_interval(seconds)

    def pause(self) -> None:
        self.refresher.pause()

    def resume(self) -> None:
        self.refresher.resume()

    def set_paused(self, paused: bool) -> str:
        """Pause or resume; returns the label a Pause/Resume button shows then."""
        if paused:
            self.pause()
        else:
            self.resume()
        return "Resume" if paused else "Pause"
