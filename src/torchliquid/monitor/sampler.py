"""``HardwareMonitor``: a daemon thread that polls backends on a fixed schedule.

The study sampled GPU and memory use every 0.2 s; this reproduces that with a
drift-free schedule (tick ``k`` is due at ``start + k * interval``, so per-tick cost does
not accumulate into the period) and an ``Event.wait`` between ticks, so ``stop()``
returns as soon as the in-flight tick finishes instead of after a full interval.

Typical use in a trainer (one per process; under DDP pass ``devices=[local_rank]``)::

    with HardwareMonitor(interval=0.2, devices=[local_rank]) as mon:
        fit(...)
    result["monitor"] = mon.summary()
    mon.write_samples_csv(run_dir / "samples.csv")
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .backends import Backend, HostBackend, NullBackend, Record, open_gpu_backend
from .summary import summarize, write_samples_csv

log = logging.getLogger(__name__)


def next_tick(t0: float, interval: float, now: float, k: int) -> tuple[int, float, int]:
    """Schedule after tick ``k`` finished at clock time ``now``.

    Returns ``(k_next, delay, skipped)``: the next tick index, seconds to wait for it,
    and how many due ticks were skipped because sampling fell behind (we skip rather
    than burst, so a stalled process does not produce a clump of back-to-back samples).
    """
    k_next = max(k + 1, math.floor((now - t0) / interval) + 1)
    return k_next, max(0.0, t0 + k_next * interval - now), k_next - (k + 1)


class HardwareMonitor:
    """Samples hardware backends every ``interval`` seconds into flat records.

    Args:
        interval: seconds between ticks (the study used 0.2). Must be > 0.
        devices: CUDA-logical GPU indices to watch (``[local_rank]`` under DDP); None
            watches every visible GPU. Ignored when ``backends`` is given.
        backends: objects with ``kind``, ``device_ids()``, ``info()``, ``read(t)``,
            ``close()`` (see ``backends.py``). None builds the default pair: NVML (or a
            ``NullBackend`` saying why not) and :class:`HostBackend`. ``[]`` disables
            monitoring entirely: ``start()`` then runs no thread.
        clock: monotonic seconds; injected by tests to drive ``sample_once()``.

    Raises:
        ValueError: ``interval`` is not a positive finite number, or ``devices`` is
            invalid (see :func:`open_gpu_backend`).

    One monitor covers one run: ``start()`` → ``stop()``; it cannot be restarted.
    Records are ``{"t": seconds since the first tick, "device": id, <metric>: float}``.
    """

    def __init__(
        self,
        interval: float = 0.2,
        devices: Sequence[int] | None = None,
        backends: Sequence[Backend] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (isinstance(interval, bool) or not isinstance(interval, (int, float))
                or not math.isfinite(interval) or interval <= 0):
            raise ValueError(
                f"interval must be a positive number of seconds (e.g. 0.2), got {interval!r}"
            )
        self.interval = float(interval)
        self._clock = clock
        if backends is None:
            backends = [open_gpu_backend(devices), HostBackend()]
        self._backends: list[Backend] = list(backends)
        self._samples: list[Record] = []
        self._lock = threading.Lock()  # guards _samples and the error counters
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0: float | None = None
        self._stopped = False
        self._late_ticks = 0
        self._errors = 0
        self._last_error: str | None = None

    # -- availability -----------------------------------------------------------------

    @property
    def gpu_available(self) -> bool:
        """True when some backend reads at least one GPU."""
        return any(b.kind == "gpu" and b.device_ids() for b in self._backends)

    @property
    def gpu_unavailable_reason(self) -> str | None:
        """Why no GPU is monitored (None when one is)."""
        if self.gpu_available:
            return None
        for b in self._backends:
            if isinstance(b, NullBackend) and b.kind == "gpu" and b.reason:
                return b.reason
        return "no GPU backend configured"

    # -- sampling ---------------------------------------------------------------------

    def sample_once(self) -> list[Record]:
        """Take one tick now: read every backend, append and return the records.

        A backend that raises is counted in ``summary()["errors"]`` and skipped for this
        tick; the others still report, and the thread keeps running.

        Raises:
            RuntimeError: called from another thread while the sampling thread runs
                (backends keep per-read state, e.g. the power integral, and are not
                thread-safe).
        """
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            raise RuntimeError("sample_once() while the monitor thread is running; stop() first")
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        t = now - self._t0
        tick: list[Record] = []
        for b in self._backends:
            try:
                tick.extend(b.read(t))
            except Exception as e:  # noqa: BLE001 - a sampler must never kill training
                with self._lock:
                    self._errors += 1
                    first = self._last_error is None
                    self._last_error = f"{type(b).__name__}: {e!r}"
                if first:
                    log.warning("hardware monitor: %s (further errors counted only)",
                                self._last_error)
        with self._lock:
            self._samples.extend(tick)
        return tick

    def _run(self) -> None:
        assert self._t0 is not None  # set by start() before the thread exists
        k = 0
        try:
            while not self._stop_event.is_set():
                self.sample_once()
                k, delay, skipped = next_tick(self._t0, self.interval, self._clock(), k)
                self._late_ticks += skipped  # only this thread writes it
                if self._stop_event.wait(delay):
                    break
        except Exception:  # noqa: BLE001 - report once; never take the process down
            log.exception("hardware monitor thread stopped unexpectedly")

    def start(self) -> HardwareMonitor:
        """Start the sampling thread (first tick immediately). Returns ``self``.

        Raises:
            RuntimeError: the monitor is already running or was stopped.
        """
        if self._thread is not None or self._stopped:
            raise RuntimeError("HardwareMonitor.start(): already started; use a new monitor")
        self._t0 = self._clock() if self._t0 is None else self._t0
        if not any(b.device_ids() for b in self._backends):
            return self  # nothing to read: the null monitor costs no thread
        self._thread = threading.Thread(
            target=self._run, name=f"torchliquid-monitor-{os.getpid()}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, take one final sample, release backends. Idempotent.

        The final sample makes the recorded span cover the whole run (energy counters
        included) however the last interval was cut short.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # Generous bound: a tick is microseconds, but a wedged driver call must not
            # hang shutdown forever (the thread is a daemon, so exit still proceeds).
            thread.join(timeout=max(10.0, 10 * self.interval))
            if thread.is_alive():
                log.warning("hardware monitor thread did not stop; backends left open")
                return
            self.sample_once()
        for b in self._backends:
            try:
                b.close()
            except Exception as e:  # noqa: BLE001 - closing must not mask the run's result
                log.warning("hardware monitor: closing %s failed: %r", type(b).__name__, e)

    def __enter__(self) -> HardwareMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # -- results ----------------------------------------------------------------------

    @property
    def samples(self) -> list[Record]:
        """A snapshot (shallow copy) of all records so far, in tick order."""
        with self._lock:
            return list(self._samples)

    def summary(self) -> dict[str, Any]:
        """Per-device means/peaks/energy plus availability and health; JSON-ready.

        Keys: everything :func:`summarize` returns, with each device's static
        ``info()`` (GPU name, ``energy_source``, ...) merged into its entry, plus
        ``gpu_available``, ``gpu_unavailable_reason``, ``late_ticks`` (ticks skipped
        because sampling fell behind) and ``errors`` (``{"count", "last"}``).
        """
        out = summarize(self.samples, interval=self.interval)
        for b in self._backends:
            for dev, meta in b.info().items():
                out["devices"].setdefault(dev, {"n_samples": 0}).update(meta)
        out["gpu_available"] = self.gpu_available
        out["gpu_unavailable_reason"] = self.gpu_unavailable_reason
        out["late_ticks"] = self._late_ticks
        with self._lock:
            out["errors"] = {"count": self._errors, "last": self._last_error}
        return out

    def write_samples_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the raw time series to ``path`` atomically; see :func:`write_samples_csv`."""
        return write_samples_csv(self.samples, path)
