"""Backends against fake NVML / psutil modules, plus the real degrade path on this box.

The fakes (``torchliquid.monitor.testing``) implement exactly the nvidia-ml-py calls the
backend makes, so these tests pin the NVML contract: units (mW -> W, mJ -> J, bytes ->
MiB), NVMLError on init, unsupported queries, CUDA_VISIBLE_DEVICES mapping, shutdown.
"""

from __future__ import annotations

import sys

import pytest

from torchliquid.monitor import HostBackend, NullBackend, NvmlBackend, open_gpu_backend
from torchliquid.monitor.backends import visible_nvml_indices
from torchliquid.monitor.testing import FakeNvml, FakePsutil

NO_ENV: dict[str, str] = {}  # no CUDA_VISIBLE_DEVICES, whatever the test host has set


def test_nvml_reads_all_metrics_in_si_units() -> None:
    nvml = FakeNvml(n_devices=1)
    nvml.util, nvml.mem_util, nvml.power_w = [87.0], [33.0], [250.5]
    nvml.mem_used_mib, nvml.mem_total_mib = [2048.0], [8192.0]
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    assert isinstance(b, NvmlBackend) and b.device_ids() == ["gpu0"]
    (rec,) = b.read(0.0)
    assert rec == {
        "t": 0.0, "device": "gpu0", "util_pct": 87.0, "mem_util_pct": 33.0,
        "mem_used_mib": 2048.0, "mem_total_mib": 8192.0, "mem_used_pct": 25.0,
        "power_w": 250.5, "energy_j": 0.0,
    }
    assert b.info()["gpu0"] == {"name": "Fake GPU", "nvml_index": 0,
                                "energy_source": "nvml_energy_counter"}


def test_energy_counter_is_reported_since_first_read_in_joules() -> None:
    nvml = FakeNvml(n_devices=1)
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    b.read(0.0)
    nvml.energy_mj[0] += 1500.0  # +1.5 J
    assert b.read(0.2)[0]["energy_j"] == pytest.approx(1.5)


def test_energy_unsupported_falls_back_to_power_trapezoid() -> None:
    nvml = FakeNvml(n_devices=1, energy_supported=False)
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    assert b.info()["gpu0"]["energy_source"] == "power_trapezoid"
    energies = []
    for t, p in [(0.0, 100.0), (0.2, 300.0), (0.4, 200.0)]:
        nvml.power_w[0] = p
        energies.append(b.read(t)[0]["energy_j"])
    # 0 ; 0.5*(100+300)*0.2 = 40 ; 40 + 0.5*(300+200)*0.2 = 90
    assert energies == pytest.approx([0.0, 40.0, 90.0])
    # The unsupported query was probed once at open, never polled per tick.
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1


def test_unsupported_power_and_util_are_absent_not_zero() -> None:
    nvml = FakeNvml(n_devices=1, energy_supported=False, power_supported=False,
                    util_supported=False)
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    (rec,) = b.read(0.0)
    assert {"power_w", "energy_j", "util_pct", "mem_util_pct"}.isdisjoint(rec)
    assert rec["mem_used_mib"] == 1024.0
    assert b.info()["gpu0"]["energy_source"] == "unsupported"


def test_init_error_degrades_to_null_with_reason() -> None:
    nvml = FakeNvml(init_error="Driver Not Loaded")
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    assert isinstance(b, NullBackend) and b.kind == "gpu"
    assert b.reason == "NVML: Driver Not Loaded"
    assert b.device_ids() == [] and b.read(0.0) == [] and b.info() == {}


def test_zero_devices_degrades_and_shuts_nvml_down() -> None:
    nvml = FakeNvml(n_devices=0)
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    assert isinstance(b, NullBackend) and b.reason == "no GPU"
    assert nvml.initialised == 0  # nvmlInit was balanced by nvmlShutdown


def test_missing_pynvml_degrades(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    b = open_gpu_backend()
    assert isinstance(b, NullBackend) and b.reason == "pynvml not installed"


def test_real_pynvml_opens_or_states_why() -> None:
    # No GPU in CI: NVML fails to initialise and we must say so. On a GPU box, it opens.
    b = open_gpu_backend()
    try:
        if isinstance(b, NullBackend):
            assert b.reason.startswith(("NVML: ", "no GPU", "pynvml not installed"))
        else:
            assert b.device_ids() and b.read(0.0)[0]["device"] == b.device_ids()[0]
    finally:
        b.close()


def test_close_balances_init() -> None:
    nvml = FakeNvml(n_devices=2)
    b = open_gpu_backend(nvml=nvml, env=NO_ENV)
    assert nvml.initialised == 1
    b.close()
    b.close()  # second close: NVMLError("Uninitialized") is swallowed
    assert nvml.initialised == 0


@pytest.mark.parametrize(
    ("devices", "env", "ids"),
    [
        (None, {}, ["gpu0", "gpu1", "gpu2", "gpu3"]),
        ([1], {}, ["gpu1"]),  # local_rank 1 without CUDA_VISIBLE_DEVICES
        ([1], {"CUDA_VISIBLE_DEVICES": "3,2"}, ["gpu2"]),  # CUDA 1 is physical 2
        (None, {"CUDA_VISIBLE_DEVICES": "2, 0"}, ["gpu2", "gpu0"]),
        (None, {"CUDA_VISIBLE_DEVICES": "1,7,2"}, ["gpu1"]),  # CUDA stops at invalid 7
        (None, {"CUDA_VISIBLE_DEVICES": "GPU-00000003"}, ["gpu3"]),  # UUID prefix
        ([0], {"CUDA_VISIBLE_DEVICES": "1,GPU-00000002-fake"}, ["gpu1"]),
    ],
)
def test_device_selection_maps_cuda_to_nvml(devices, env, ids) -> None:
    b = open_gpu_backend(devices=devices, nvml=FakeNvml(n_devices=4), env=env)
    assert b.device_ids() == ids


@pytest.mark.parametrize("spec", ["", "-1", "MIG-abc", "GPU-nope"])
def test_no_visible_gpu_degrades(spec: str) -> None:
    nvml = FakeNvml(n_devices=2)
    b = open_gpu_backend(nvml=nvml, env={"CUDA_VISIBLE_DEVICES": spec})
    assert isinstance(b, NullBackend) and b.reason.startswith("no GPU visible")
    assert nvml.initialised == 0


def test_ambiguous_uuid_prefix_stops_parsing() -> None:
    nvml = FakeNvml(n_devices=2, uuids=["GPU-ab1", "GPU-ab2"])
    nvml.nvmlInit()
    assert visible_nvml_indices(nvml, 2, {"CUDA_VISIBLE_DEVICES": "GPU-ab"}) == []
    assert visible_nvml_indices(nvml, 2, {"CUDA_VISIBLE_DEVICES": "GPU-ab2"}) == [1]


@pytest.mark.parametrize("devices", [[2], [-1], [0.5], [True]])
def test_bad_devices_raise_naming_devices(devices) -> None:
    nvml = FakeNvml(n_devices=2)
    with pytest.raises(ValueError, match="devices"):
        open_gpu_backend(devices=devices, nvml=nvml, env=NO_ENV)
    assert nvml.initialised == 0  # the failed open did not leak an NVML init


def test_host_backend_cpu_rss_and_memory() -> None:
    ps = FakePsutil()
    ps.cpu_busy, ps.cpu_idle = 10.0, 10.0  # priming snapshot at construction
    b = HostBackend(psutil_module=ps)
    ps.cpu_busy, ps.cpu_idle = 13.0, 11.0  # +3 busy, +1 idle -> 75 %
    ps.rss_mib, ps.mem_percent = 512.0, 61.5
    assert b.read(0.2) == [{"t": 0.2, "device": "host", "cpu_util_pct": 75.0,
                            "rss_mib": 512.0, "mem_used_pct": 61.5}]
    # No CPU time elapsed since the previous read: no CPU figure rather than a fake 0 %.
    assert "cpu_util_pct" not in b.read(0.2)[0]


def test_host_backend_optionally_includes_children() -> None:
    ps = FakePsutil()
    ps.rss_mib, ps.child_rss_mib = 100.0, [30.0, 20.0]
    assert HostBackend(psutil_module=ps).read(0.0)[0]["rss_mib"] == 100.0
    assert HostBackend(include_children=True, psutil_module=ps).read(0.0)[0]["rss_mib"] == 150.0


def test_host_backend_relists_children_only_every_refresh_period() -> None:
    ps = FakePsutil()
    ps.rss_mib, ps.child_rss_mib = 100.0, [30.0, 20.0]
    b = HostBackend(include_children=True, children_refresh_s=5.0, psutil_module=ps)
    assert b.read(0.0)[0]["rss_mib"] == 150.0
    ps.child_rss_mib = [35.0, 20.0, 70.0]  # child 0 grew; a third worker started
    assert b.read(0.2)[0]["rss_mib"] == 155.0  # cached pair re-read, newcomer not yet listed
    ps.child_rss_mib = [35.0]  # child 1 exited (and the newcomer with it)
    assert b.read(0.4)[0]["rss_mib"] == 135.0  # the dead child is dropped, not an error
    assert ps.children_calls == 1
    ps.child_rss_mib = [35.0, 20.0, 70.0]
    assert b.read(5.0)[0]["rss_mib"] == 225.0  # refresh period over: listed again
    assert ps.children_calls == 2


def test_host_backend_with_real_psutil() -> None:
    (rec,) = HostBackend(include_children=True).read(0.0)
    assert rec["device"] == "host" and rec["rss_mib"] > 1.0
    assert 0.0 <= rec["mem_used_pct"] <= 100.0
