"""HardwareMonitor: driven tick by tick with a manual clock, plus thread lifecycle.

No test sleeps and hopes. Ticks come from explicit ``sample_once()`` calls; the thread
tests wait on Events that the fake backend sets, with a generous timeout that only
matters when the code is broken (a hang becomes a failure instead of a stuck CI job).
"""

from __future__ import annotations

import csv
import json
import threading

import pytest

from torchliquid.monitor import HardwareMonitor, HostBackend, NullBackend, open_gpu_backend
from torchliquid.monitor.sampler import next_tick
from torchliquid.monitor.testing import FakeNvml, FakePsutil, ManualClock

WAIT_S = 10.0  # upper bound for "eventually" on a loaded 2-core box; never a measurement


class EventBackend:
    """Counts reads and sets ``ready`` after ``n`` of them."""

    kind = "host"

    def __init__(self, n: int = 1) -> None:
        self.n, self.reads, self.closed = n, 0, 0
        self.ready = threading.Event()

    def device_ids(self) -> list[str]:
        return ["fake"]

    def info(self) -> dict:
        return {}

    def read(self, t: float) -> list[dict]:
        self.reads += 1
        if self.reads >= self.n:
            self.ready.set()
        return [{"t": t, "device": "fake", "x": float(self.reads)}]

    def close(self) -> None:
        self.closed += 1


class BrokenBackend(EventBackend):
    def read(self, t: float) -> list[dict]:
        raise RuntimeError("GPU is lost")


@pytest.mark.parametrize("interval", [0, -0.2, float("nan"), float("inf"), "0.2", None, True])
def test_interval_must_be_positive_number(interval) -> None:
    with pytest.raises(ValueError, match="interval"):
        HardwareMonitor(interval=interval, backends=[])


def _fake_monitor(energy_supported: bool = True) -> tuple[HardwareMonitor, FakeNvml, FakePsutil, ManualClock]:
    nvml, ps, clock = FakeNvml(n_devices=2, energy_supported=energy_supported), FakePsutil(), ManualClock()
    mon = HardwareMonitor(
        interval=0.2,
        backends=[open_gpu_backend(nvml=nvml, env={}), HostBackend(psutil_module=ps)],
        clock=clock,
    )
    return mon, nvml, ps, clock


def test_driven_ticks_record_time_since_start_and_devices() -> None:
    mon, nvml, ps, clock = _fake_monitor()
    for k, util in enumerate([20.0, 60.0, 100.0]):
        nvml.util = [util, util / 2]
        nvml.energy_mj = [1e6 + 10_000.0 * k, 1e6 + 5_000.0 * k]  # +10 J / +5 J per tick
        ps.cpu_busy, ps.cpu_idle = 1.0 * k, 1.0 * k  # 50 % busy from tick 1 on
        tick = mon.sample_once()
        assert [r["device"] for r in tick] == ["gpu0", "gpu1", "host"]
        clock.advance(0.2)
    assert [r["t"] for r in mon.samples if r["device"] == "gpu0"] == pytest.approx([0.0, 0.2, 0.4])

    s = mon.summary()
    assert s["gpu_available"] is True and s["gpu_unavailable_reason"] is None
    gpu0, gpu1, host = (s["devices"][d] for d in ("gpu0", "gpu1", "host"))
    assert gpu0["util_pct_mean"] == pytest.approx(60.0) and gpu0["util_pct_peak"] == 100.0
    assert gpu1["util_pct_mean"] == pytest.approx(30.0)
    assert gpu0["energy_j"] == pytest.approx(20.0) and gpu1["energy_j"] == pytest.approx(10.0)
    assert gpu0["energy_source"] == "nvml_energy_counter" and gpu0["name"] == "Fake GPU"
    assert host["cpu_util_pct_mean"] == pytest.approx(50.0)
    assert (s["n_ticks"], s["interval_s"], s["errors"]["count"]) == (3, 0.2, 0)
    json.dumps(s, allow_nan=False)  # goes straight into result.json


def test_energy_without_counter_integrates_power() -> None:
    mon, nvml, _, clock = _fake_monitor(energy_supported=False)
    for p in [100.0, 300.0, 200.0]:
        nvml.power_w = [p, p]
        mon.sample_once()
        clock.advance(0.2)
    gpu0 = mon.summary()["devices"]["gpu0"]
    assert gpu0["energy_j"] == pytest.approx(90.0)  # 0.5*(100+300)*0.2 + 0.5*(300+200)*0.2
    assert gpu0["energy_source"] == "power_trapezoid"


def test_cpu_only_default_monitor_reports_host_and_gpu_reason() -> None:
    # The real default path: on this CPU box NVML fails, on a GPU box it works; either
    # way the host is measured and GPU availability is stated, never raised.
    mon = HardwareMonitor(interval=0.2)
    mon.sample_once()
    mon.sample_once()
    mon.stop()
    s = mon.summary()
    assert s["devices"]["host"]["n_samples"] == 2 and s["devices"]["host"]["rss_mib_peak"] > 1
    if not s["gpu_available"]:
        assert s["gpu_unavailable_reason"].startswith(("NVML: ", "no GPU", "pynvml not installed"))
        assert not any(d.startswith("gpu") for d in s["devices"])


def test_null_gpu_reason_and_explicit_backends_without_gpu() -> None:
    mon = HardwareMonitor(backends=[NullBackend("gpu", "no GPU"), EventBackend()])
    assert (mon.gpu_available, mon.gpu_unavailable_reason) == (False, "no GPU")
    mon = HardwareMonitor(backends=[EventBackend()])
    assert mon.gpu_unavailable_reason == "no GPU backend configured"


def test_failing_backend_is_counted_and_others_still_report() -> None:
    good = EventBackend()
    mon = HardwareMonitor(backends=[BrokenBackend(), good], clock=ManualClock())
    assert [r["device"] for r in mon.sample_once()] == ["fake"]
    mon.sample_once()
    errors = mon.summary()["errors"]
    assert errors["count"] == 2 and "GPU is lost" in errors["last"]


def test_write_samples_csv_parseable(tmp_path) -> None:
    mon, _, _, clock = _fake_monitor()
    for _ in range(3):
        mon.sample_once()
        clock.advance(0.2)
    path = mon.write_samples_csv(tmp_path / "samples.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9  # 3 ticks x (2 GPUs + host)
    assert {r["device"] for r in rows} == {"gpu0", "gpu1", "host"}
    assert float(rows[-1]["t"]) == pytest.approx(0.4)
    assert float(rows[0]["power_w"]) == pytest.approx(100.0)


# -- schedule -----------------------------------------------------------------------


def test_next_tick_is_drift_free() -> None:
    # Tick 0 at t0=10 took 0.05 s: wait until 10.2, not 0.2 s from now.
    assert next_tick(10.0, 0.2, 10.05, 0) == pytest.approx((1, 0.15, 0))
    # Tick 3 (slot 10.6) finished at 10.61: the next slot is 10.8, 0.19 s away.
    k, delay, skipped = next_tick(10.0, 0.2, 10.61, 3)
    assert (k, skipped) == (4, 0) and delay == pytest.approx(0.19)


def test_next_tick_skips_missed_ticks_instead_of_bursting() -> None:
    # After tick 1 the process stalled until 10.95: ticks 2, 3, 4 are past due.
    k, delay, skipped = next_tick(10.0, 0.2, 10.95, 1)
    assert (k, skipped) == (5, 3) and delay == pytest.approx(0.05)


# -- thread lifecycle ---------------------------------------------------------------


def test_start_stop_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    backend = EventBackend(n=3)
    mon = HardwareMonitor(interval=0.001, backends=[backend])
    mon.start()
    assert mon.running
    assert backend.ready.wait(WAIT_S), "sampler thread never produced 3 ticks"
    mon.stop()
    assert set(threading.enumerate()) == before
    assert not mon.running and backend.closed == 1
    n = len(mon.samples)
    assert n >= 4  # >= 3 thread ticks + the final sample taken by stop()
    mon.stop()  # idempotent: no error, no second close, no extra sample
    assert backend.closed == 1 and len(mon.samples) == n


def test_sample_once_refused_while_thread_runs() -> None:
    backend = EventBackend(n=1)
    with HardwareMonitor(interval=3600.0, backends=[backend]) as mon:
        assert backend.ready.wait(WAIT_S)
        with pytest.raises(RuntimeError, match="stop"):
            mon.sample_once()


def test_stop_is_prompt_even_with_a_long_interval() -> None:
    backend, clock = EventBackend(n=1), ManualClock()
    mon = HardwareMonitor(interval=3600.0, backends=[backend], clock=clock).start()
    assert backend.ready.wait(WAIT_S)
    clock.advance(5.0)  # the run ends 5 s in, long before tick 1 is due
    # If the thread slept for the interval instead of waiting on the stop Event,
    # stop() would block for an hour and the stopper below would still be alive.
    stopper = threading.Thread(target=mon.stop, daemon=True)
    stopper.start()
    stopper.join(WAIT_S)
    assert not stopper.is_alive(), "stop() did not return promptly"
    assert not mon.running
    # stop() closed the span with a final sample, so the run's tail is not lost.
    assert [r["t"] for r in mon.samples] == [0.0, 5.0]


def test_context_manager_and_no_restart() -> None:
    backend = EventBackend(n=1)
    with HardwareMonitor(interval=0.001, backends=[backend]) as mon:
        assert backend.ready.wait(WAIT_S)
    assert not mon.running and backend.closed == 1
    with pytest.raises(RuntimeError, match="already started"):
        mon.start()


def test_empty_backends_is_a_null_monitor_without_thread() -> None:
    before = set(threading.enumerate())
    mon = HardwareMonitor(backends=[]).start()
    assert set(threading.enumerate()) == before and not mon.running
    mon.stop()
    s = mon.summary()
    assert s["devices"] == {} and s["gpu_available"] is False
