"""Build-on-first-use loader for the CPU kernels in _fused_csrc (C, ctypes, no torch headers).

The kernels are plain C compiled once per machine with the system C compiler (~1 s, cached
under $TORCHLIQUID_CACHE or ~/.cache/torchliquid) and called through ctypes with raw data
pointers, which releases the GIL. A torch C++ extension would compile for minutes on a small
CPU; a plain C library needs no torch headers. Everything degrades: without a compiler, or with
TORCHLIQUID_NATIVE=0, `available()` is False and callers use their torch paths.

Shape legend: N rows (batch x time), S presynaptic neurons, U units, P synapses, B batch,
T time steps, K ODE unfolds.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from . import _fused_csrc

_FLAGS = ["-O3", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-Werror=implicit-function-declaration"]
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_failed: Optional[str] = None

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _cache_dir() -> Path:
    root = os.environ.get("TORCHLIQUID_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "torchliquid"
    )
    return Path(root)


def _cpu_signature() -> str:
    # -march=native code is only valid on the CPU it was built for: key the cache on its flags.
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compile() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    src = _fused_csrc.source()
    flags = _FLAGS + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])
    key = hashlib.sha256("\n".join([src, compiler, *flags, _cpu_signature()]).encode()).hexdigest()
    target = _cache_dir() / f"fused_{key[:20]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            c_file = Path(tmp) / "fused.c"
            c_file.write_text(src)
            out = Path(tmp) / "fused.so"
            proc = subprocess.run(
                [compiler, *flags, str(c_file), "-o", str(out), "-lm"],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed:\n{proc.stderr[-2000:]}")
            os.replace(out, target)  # atomic: concurrent builders never see half a file
    # Load after torch so that libgomp.so.1 resolves to the copy torch already loaded.
    return ctypes.CDLL(str(target))


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, or None when it cannot be built (reason in `failure()`)."""
    global _lib, _failed
    if _lib is not None or _failed is not None:
        return _lib
    with _lock:
        if _lib is None and _failed is None:
            if os.environ.get("TORCHLIQUID_NATIVE", "1") == "0":
                _failed = "disabled by TORCHLIQUID_NATIVE=0"
            else:
                try:
                    _lib = _compile()
                except (RuntimeError, OSError) as err:
                    _failed = str(err)
                    warnings.warn(
                        f"torchliquid: native CPU kernels unavailable ({err}); using torch ops",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return _lib


def failure() -> Optional[str]:
    """Why the native library is unavailable (None if it loaded or was never asked for)."""
    return _failed


def available() -> bool:
    return library() is not None


def supports(*tensors: torch.Tensor) -> bool:
    """True when the native kernels can run on these tensors (CPU, fp32/fp64, one dtype)."""
    dtype = tensors[0].dtype
    return (
        all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
        and dtype in _SUFFIX
        and available()
    )


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _r(t: torch.Tensor, value: float):
    return ctypes.c_float(value) if t.dtype == torch.float32 else ctypes.c_double(value)


_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
# Argument types per kernel ("r" = REAL scalar): declared once so that calls pass plain ints,
# which ctypes converts in C (~2x cheaper per call than building ctypes objects in Python).
_SIGNATURES = {
    "syn_forward": [_I64] * 3 + [_PTR] * 9,
    "syn_backward": [_I64] * 4 + [_PTR] * 11,
    "ltc_forward": [_I64] * 4 + ["r"] + [_PTR] * 13,
    "ltc_backward": [_I64] * 5 + ["r"] + [_PTR] * 19,
    "cfc_act_fwd": [_I64, _I64, _INT, _PTR, _PTR, _I64, _PTR],
    "cfc_act_bwd": [_I64, _INT, _PTR, _PTR, _PTR],
    "cfc_tail_fwd": [_I64, _I64, _INT, _PTR, _I64] + [_PTR] * 6,
    "cfc_tail_bwd": [_I64, _I64, _INT] + [_PTR] * 6 + [_I64, _PTR, _I64, _PTR, _PTR],
    "cfc_seq_fwd": [_I64] * 5 + [_PTR] * 5 + [_I64, _PTR, _INT, _INT] + [_PTR] * 7,
    "cfc_seq_bwd": [_I64] * 5 + [_PTR] * 4 + [_INT, _INT] + [_PTR] * 4 + [_I64] * 3
    + [_PTR, _I64] + [_PTR] * 7,
}
_fns: dict[tuple[str, torch.dtype], Any] = {}


def kernel(name: str, dtype: torch.dtype) -> Any:
    """The ctypes function `name` for dtype, with argtypes set (pointers are plain ints)."""
    fn = _fns.get((name, dtype))
    if fn is None:
        lib = library()
        if lib is None:
            raise RuntimeError(f"native kernels unavailable: {failure()}")
        fn = getattr(lib, f"{name}_{_SUFFIX[dtype]}")
        real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
        fn.argtypes = [real if a == "r" else a for a in _SIGNATURES[name]]
        fn.restype = None
        _fns[(name, dtype)] = fn
    return fn


_fn = kernel


# Every wrapper takes contiguous tensors of one dtype (callers guarantee it) and int64 indices.


def syn_forward(
    x_NS: torch.Tensor, ptr: torch.Tensor, pre_P: torch.Tensor, params_4P: torch.Tensor, U: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synapse layer over rows: (num_NU, den_NU) = Σ_p w σ(sigma (x_pre - mu)) · (erev, 1)."""
    N, S = x_NS.shape
    num_NU = x_NS.new_empty(N, U)
    den_NU = x_NS.new_empty(N, U)
    w, mu, sg, ev = params_4P
    _fn("syn_forward", x_NS.dtype)(
        ctypes.c_int64(N), ctypes.c_int64(S), ctypes.c_int64(U), _p(x_NS), _p(ptr), _p(pre_P),
        _p(w), _p(mu), _p(sg), _p(ev), _p(num_NU), _p(den_NU),
    )  # fmt: skip
    return num_NU, den_NU


def syn_backward(
    x_NS: torch.Tensor,
    ptr: torch.Tensor,
    pre_P: torch.Tensor,
    params_4P: torch.Tensor,
    gnum_NU: torch.Tensor,
    gden_NU: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recomputing backward of syn_forward: returns (grad x_NS, grads_4P for w, mu, sigma, erev)."""
    N, S = x_NS.shape
    U = gnum_NU.shape[1]
    P = pre_P.numel()
    gx_NS = torch.empty_like(x_NS)
    grads = torch.zeros(4 * P, dtype=torch.float64)
    w, mu, sg, ev = params_4P
    _fn("syn_backward", x_NS.dtype)(
        ctypes.c_int64(N), ctypes.c_int64(S), ctypes.c_int64(U), ctypes.c_int64(P), _p(x_NS),
        _p(ptr), _p(pre_P), _p(w), _p(mu), _p(sg), _p(ev), _p(gnum_NU), _p(gden_NU), _p(gx_NS),
        _p(grads),
    )  # fmt: skip
    return gx_NS, grads.view(4, P).to(x_NS.dtype)


def ltc_forward(
    v0_BU: torch.Tensor,
    sn_BTU: torch.Tensor,
    sd_BTU: torch.Tensor,
    cmt_BTU: torch.Tensor,
    gleak_U: torch.Tensor,
    vleak_U: torch.Tensor,
    ptr: torch.Tensor,
    pre_P: torch.Tensor,
    params_4P: torch.Tensor,
    unfolds: int,
    epsilon: float,
) -> torch.Tensor:
    """All states v_BTU of the LTC recurrence (see ltc_fused for the math)."""
    B, T, U = sn_BTU.shape
    v_BTU = sn_BTU.new_empty(B, T, U)
    w, mu, sg, ev = params_4P
    _fn("ltc_forward", v0_BU.dtype)(
        ctypes.c_int64(B), ctypes.c_int64(T), ctypes.c_int64(U), ctypes.c_int64(unfolds),
        _r(v0_BU, epsilon), _p(v0_BU), _p(sn_BTU), _p(sd_BTU), _p(cmt_BTU), _p(gleak_U),
        _p(vleak_U), _p(ptr), _p(pre_P), _p(w), _p(mu), _p(sg), _p(ev), _p(v_BTU),
    )  # fmt: skip
    return v_BTU


def ltc_backward(
    v0_BU: torch.Tensor,
    sn_BTU: torch.Tensor,
    sd_BTU: torch.Tensor,
    cmt_BTU: torch.Tensor,
    gleak_U: torch.Tensor,
    vleak_U: torch.Tensor,
    ptr: torch.Tensor,
    pre_P: torch.Tensor,
    params_4P: torch.Tensor,
    unfolds: int,
    epsilon: float,
    v_BTU: torch.Tensor,
    g_BTU: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Recomputing backward: (g_v0, g_sn, g_sd, g_cmt, g_params_4P, g_gleak, g_vleak)."""
    B, T, U = sn_BTU.shape
    P = pre_P.numel()
    g_v0 = torch.empty_like(v0_BU)
    g_sn, g_sd, g_cmt = (torch.empty_like(sn_BTU) for _ in range(3))
    grads = torch.zeros(4 * P + 2 * U, dtype=torch.float64)
    w, mu, sg, ev = params_4P
    _fn("ltc_backward", v0_BU.dtype)(
        ctypes.c_int64(B), ctypes.c_int64(T), ctypes.c_int64(U), ctypes.c_int64(unfolds),
        ctypes.c_int64(P), _r(v0_BU, epsilon), _p(v0_BU), _p(sn_BTU), _p(sd_BTU), _p(cmt_BTU),
        _p(gleak_U), _p(vleak_U), _p(ptr), _p(pre_P), _p(w), _p(mu), _p(sg), _p(ev), _p(v_BTU),
        _p(g_BTU), _p(g_v0), _p(g_sn), _p(g_sd), _p(g_cmt), _p(grads),
    )  # fmt: skip
    grads = grads.to(v0_BU.dtype)
    return g_v0, g_sn, g_sd, g_cmt, grads[: 4 * P].view(4, P), grads[4 * P : 4 * P + U], grads[4 * P + U :]


# ----------------------------------------------------------------------- CfC element-wise parts

CFC_MODES = {"default": 0, "no_gate": 1, "pure": 2}
CFC_MERGED_GATE = 4  # mode flag: heads are [ff1 | ff2 | time_a + time_b], dt = 1
CFC_ACTIVATIONS = {"lecun_tanh": 0, "tanh": 1}  # others run as torch ops


def _opt(t: Optional[torch.Tensor]) -> ctypes.c_void_p:
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def cfc_act_forward(
    kind: int, pre_RC: torch.Tensor, out_RC: torch.Tensor, add: Optional[torch.Tensor] = None
) -> None:
    """out = act(pre + add) on a contiguous (R, C) block; add is (R, C), a (C,) bias or None."""
    R, C = pre_RC.shape
    stride = 0 if add is None or add.dim() == 1 else C
    _fn("cfc_act_fwd", pre_RC.dtype)(R, C, kind, pre_RC.data_ptr(), _opt(add), stride, out_RC.data_ptr())


def cfc_act_backward(kind: int, y: torch.Tensor, gy: torch.Tensor, gpre: torch.Tensor) -> None:
    """gpre = gy * act'(.) computed from the activation's output y."""
    _fn("cfc_act_bwd", y.dtype)(
        ctypes.c_int64(y.numel()), ctypes.c_int(kind), _p(y), _p(gy), _p(gpre)
    )


def cfc_tail_forward(
    mode: int,
    heads_BX: torch.Tensor,
    dt_B: Optional[torch.Tensor],
    w_tau_U: Optional[torch.Tensor],
    a_U: Optional[torch.Tensor],
    h_BU: torch.Tensor,
    acts_B3U: torch.Tensor,
    bias_X: Optional[torch.Tensor] = None,
) -> None:
    """h_BU and the saved activations acts_B3U from the head outputs (+ bias_X if given)."""
    B, U = h_BU.shape
    _fn("cfc_tail_fwd", h_BU.dtype)(
        ctypes.c_int64(B), ctypes.c_int64(U), ctypes.c_int(mode), _p(heads_BX),
        ctypes.c_int64(heads_BX.stride(0)), _opt(bias_X), _opt(dt_B), _opt(w_tau_U), _opt(a_U),
        _p(h_BU), _p(acts_B3U),
    )  # fmt: skip


def cfc_tail_backward(
    mode: int,
    acts_B3U: torch.Tensor,
    dt_B: Optional[torch.Tensor],
    w_tau_U: Optional[torch.Tensor],
    a_U: Optional[torch.Tensor],
    g_carry_BU: torch.Tensor,
    g_out_BU: Optional[torch.Tensor],
    g_heads_BX: torch.Tensor,
    g_a_BU: Optional[torch.Tensor],
    g_w_BU: Optional[torch.Tensor],
) -> None:
    """g_heads_BX from g = g_carry + g_out; pure mode also accumulates g_a_BU, g_w_BU."""
    B, U = g_carry_BU.shape
    _fn("cfc_tail_bwd", g_carry_BU.dtype)(
        ctypes.c_int64(B), ctypes.c_int64(U), ctypes.c_int(mode), _p(acts_B3U), _opt(dt_B),
        _opt(w_tau_U), _opt(a_U), _p(g_carry_BU), _opt(g_out_BU), ctypes.c_int64(U), _p(g_heads_BX),
        ctypes.c_int64(g_heads_BX.stride(0)), _opt(g_a_BU), _opt(g_w_BU),
    )  # fmt: skip


# ------------------------------------------------------------------- CfC whole-sequence loops

def _ptrs(tensors) -> Any:
    return (ctypes.c_void_p * max(1, len(tensors)))(*[0 if t is None else t.data_ptr() for t in tensors])


def _widths(weights) -> Any:
    """The layers' output widths as a C int64 array (a torch.tensor of them cost ~15 µs a call)."""
    return (ctypes.c_int64 * len(weights))(*[w.shape[0] for w in weights])


def cfc_seq_forward(mode: int, act: int, weights, biases, x_BTI, h0_BU, dt_TB1, w_tau_U, a_U,
                    ys, h_TBU, acts_TB3U, p0_TBO=None) -> None:  # fmt: skip
    """The whole forward time loop in C (see _fused_csrc_cfc_seq); fills ys, h_TBU, acts_TB3U.

    x_BTI must be contiguous: step t of row b is read at x + b·T·I + t·I. p0_TBO, if given, is
    x W_x^T + b_0 for all steps (time-major, contiguous) and replaces the per-step input GEMM."""
    B, T, I = x_BTI.shape
    U, nb = h0_BU.shape[1], len(weights) - 1
    heads = h0_BU.new_empty(B, weights[-1].shape[0])
    kernel("cfc_seq_fwd", h0_BU.dtype)(
        T, B, U, I, nb, _widths(weights), _ptrs(weights), _ptrs(biases),
        _opt(p0_TBO).value, x_BTI.data_ptr(), T * I, h0_BU.data_ptr(), mode, act, _opt(dt_TB1).value,
        _opt(w_tau_U).value, _opt(a_U).value, _ptrs(ys), heads.data_ptr(), h_TBU.data_ptr(),
        acts_TB3U.data_ptr(),
    )  # fmt: skip


def cfc_seq_backward(mode: int, act: int, weights, ys, acts_TB3U, dt_TB1, w_tau_U, a_U, g,
                     x_BTI, h0_BU, h_TBU, grads, g_pre0_TBO, g_carry_BU, g_a_BU, g_w_BU) -> None:  # fmt: skip
    """The whole backward time loop in C: adds every weight and bias gradient into grads (zeroed
    tensors shaped as [W_0, b_0, W_1, b_1, ...]), fills g_carry_BU (= dL/dh0) and, if given,
    g_pre0_TBO (dL/d(first layer's pre-activation)). With x_BTI None, dW_x (columns :I of
    grads[0]) is left to the caller (wide inputs: one BLAS GEMM from g_pre0_TBO).

    g is dL/d(states) as (B, T, U) (any strides with unit stride on U) or, when only the last
    state was returned, dL/dh_T as (B, U)."""
    T, B, U = h_TBU.shape
    nb = len(weights) - 1
    I = weights[0].shape[1] - U
    last_only = g.dim() == 2
    g_t, g_b = (0, g.stride(0)) if last_only else (g.stride(1), g.stride(0))
    kernel("cfc_seq_bwd", g_carry_BU.dtype)(
        T, B, U, I, nb, _widths(weights), _ptrs(weights), _ptrs(ys), acts_TB3U.data_ptr(), mode, act,
        _opt(dt_TB1).value, _opt(w_tau_U).value, _opt(a_U).value, g.data_ptr(), g_t, g_b, int(last_only),
        _opt(x_BTI).value, T * I, h0_BU.data_ptr(), h_TBU.data_ptr(), _opt(g_pre0_TBO).value,
        g_carry_BU.data_ptr(), _opt(g_a_BU).value, _opt(g_w_BU).value, _ptrs(grads),
    )  # fmt: skip
