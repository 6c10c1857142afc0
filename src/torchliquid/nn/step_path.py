"""One time step of a CfC/LTC layer without autograd: the streaming-inference path.

Where it runs: ``SequenceLayer.forward`` under implementation="auto" for a length-1 input
(T = 1) when no gradient is wanted (``torch.no_grad``/``inference_mode``, or nothing requires
grad), and ``infer.Stream.step``. Named implementations ("reference", a kernel) are never
replaced; mixed memory, tracing/compiling/export, autocast, active backbone dropout and forward
hooks on the layer's submodules keep the ordinary path.

Why: a whole-sequence kernel pays per call for set-up that one step cannot amortise (head
concatenation, parameter packing, softplus of every LTC parameter: 120 us for HAR's 561 x 64
sensory weights alone), and the cells' ``_step`` re-derives the same tensors on every step. A
:class:`Plan` derives them once per parameter state and replays the step from them:

    CfC   heads ff1|ff2|time_a|time_b as one (4U, Z) matrix, sparsity masks applied;
          the math is functional.py's, op for op (0 difference from "reference" on this
          machine's BLAS; the heads' one GEMM may round ~1e-7 apart elsewhere)
    LTC   softplus'd, masked and erev-weighted synapse grids, cm / (1 / unfolds), the wiring's
          synapse list packed for the native kernel; sensory currents with functional.py's
          torch ops, the unfolds in the native C kernel (~1e-7 from "reference"; torch ops,
          the reference's order of operations, where it cannot run)

Cache invalidation (a stale plan would silently run old weights): a plan is rebuilt when any
tensor it read is replaced or changed in place (identity, ``_version``, ``data_ptr``: an
optimizer step, ``load_state_dict``, an edit under ``no_grad``, ``.data =``, ``.to()``), when any
torch optimizer steps (fused optimizers update parameters without bumping ``_version``; a
global step hook counts every ``Optimizer.step``), when a module, tensor or plain attribute
on its path (mode, epsilon, ode_unfolds, ...) is replaced, or a Sequential gains a member. An edit through ``tensor.data`` in place
(``p.data.add_(1)``) is invisible to all of these, as it is to autograd: call
``invalidate(layer)`` after one.

Shape legend: B batch, I inputs, U units, Z = I + U or backbone width, M cell outputs, O outputs.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_globals
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import _fused_native as native
from . import functional
from .ltc_fused import synapse_index

_epoch = 0  # +1 per Optimizer.step anywhere (once a plan exists) and per invalidate()
_hook_handle: Any = None
_version, _data_ptr = attrgetter("_version"), torch.Tensor.data_ptr
_PLAN = "_torchliquid_step_plan"  # the layer's plan lives in its __dict__ (pickled as stale)


def _count_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    global _epoch
    _epoch += 1


def invalidate(layer: Optional[nn.Module] = None) -> None:
    """Forget the plan of ``layer`` (of every layer if None); the next step rebuilds it."""
    global _epoch
    if layer is None:
        _epoch += 1
    else:
        layer.__dict__.pop(_PLAN, None)


_is_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None)


def tracing() -> bool:
    """True under torch.jit.trace, torch.compile or torch.export, where opaque ctypes calls and
    hand-written autograd Functions would break or be frozen into the graph; the loop is not."""
    return _is_compiling() or _is_tracing() or _is_exporting()  # is_compiling first: dynamo folds it


def autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


class _NotCovered(Exception):
    """The layer holds something the step path does not replay (a custom module, mixed dtypes)."""


class Plan:
    """What one layer's step needs, derived from its parameters, and what it was derived from:
    every dict lookup on the way (modules, parameters, buffers and the plain attributes read,
    by identity), every tensor's version and data pointer, and the optimizer-step epoch."""

    def __init__(self) -> None:
        self.hop_dicts: list[dict] = []  # dicts read on the path, ...
        self.hop_keys: list[str] = []  # ... the key read from each, ...
        self.hop_objects: list[Any] = []  # ... and what it held (kept alive: ids stay unique)
        self.hop_ids: list[int] = []
        self.iterated: list[dict] = []  # dicts walked in full (a Sequential's members)
        self.lengths: list[int] = []
        self.tensors: list[torch.Tensor] = []  # every tensor read
        self.version_sum = -1
        self.pointers: list[int] = []
        self.hook_dicts: list[dict] = []  # forward (pre-)hooks of every module on the path
        self.dropouts: list[nn.Module] = []
        self.run: Optional[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = None
        self.epoch = -1  # never current until sealed
        self.dtype: Optional[torch.dtype] = None
        self.device: Optional[torch.device] = None

    def __reduce__(self) -> tuple:  # copy.deepcopy / pickle of the layer: rebuilt on first use
        return (Plan, ())

    # -- recording the path, while building --

    def module(self, parent: nn.Module, name: str) -> Any:
        child = self._hop(parent._modules, name)
        if child is not None:
            self.hook_dicts += [child._forward_hooks, child._forward_pre_hooks]
        return child

    def tensor(self, module: nn.Module, name: str, buffer: bool = False) -> Optional[torch.Tensor]:
        value = self._hop(module._buffers if buffer else module._parameters, name)
        if value is not None:
            self.tensors.append(value)
        return value

    def attr(self, module: nn.Module, name: str) -> Any:
        """A plain (non-tensor) attribute; the plan is rebuilt when it is reassigned."""
        if name not in module.__dict__:
            raise _NotCovered(f"{type(module).__name__} has no attribute {name!r}")
        return self._hop(module.__dict__, name)

    def children(self, parent: nn.Module) -> list[nn.Module]:
        self.iterated.append(parent._modules)  # a member added: its length; removed: its hop
        return [self.module(parent, name) for name in parent._modules]

    def _hop(self, mapping: dict, key: str) -> Any:
        value = mapping.get(key)
        self.hop_dicts.append(mapping)
        self.hop_keys.append(key)
        self.hop_objects.append(value)
        return value

    def seal(self) -> None:
        """Record the state of the path (a plan that cannot run records the path up to the part
        it cannot replay, so it is rebuilt only when that part changes)."""
        self.hop_ids = [id(obj) for obj in self.hop_objects]
        self.lengths = [len(mapping) for mapping in self.iterated]
        self.version_sum = sum(t._version for t in self.tensors)  # counters only grow: a sum will do
        self.pointers = [t.data_ptr() for t in self.tensors]
        self.epoch = _epoch
        kinds = {(t.dtype, t.device) for t in self.tensors}
        if self.run is not None and len(kinds) != 1:
            self.run = None  # parameters of more than one dtype or device: the ordinary path
        if self.run is not None:
            (self.dtype, self.device), = kinds

    # -- per call --

    def current(self) -> bool:
        """True while nothing the plan was derived from has changed (see the module doc)."""
        return (
            self.epoch == _epoch
            and list(map(id, map(dict.get, self.hop_dicts, self.hop_keys))) == self.hop_ids
            and sum(map(_version, self.tensors)) == self.version_sum
            and list(map(_data_ptr, self.tensors)) == self.pointers
            and list(map(len, self.iterated)) == self.lengths
        )

    def blocked(self) -> bool:
        """Hooks to run or dropout to apply: the ordinary path must run."""
        return (
            any(self.hook_dicts)
            or bool(_module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks)
            or bool(self.dropouts and any(m.training and m.p > 0 for m in self.dropouts))
        )


def step_plan(layer: nn.Module, x: torch.Tensor) -> Optional[Plan]:
    """The current plan of ``layer`` for input ``x`` (B, I) or (B, T, I), or None when the
    ordinary path must run. Does not look at autograd: see ``needs_graph``."""
    if layer.use_mixed or tracing() or (_any_autocast() if _any_autocast else autocast_enabled(x.device.type)):
        return None
    plan = layer.__dict__.get(_PLAN)
    if plan is None or not plan.current():
        plan = layer.__dict__[_PLAN] = _build(layer)
    if plan.run is None or x.dtype != plan.dtype or x.device != plan.device or plan.blocked():
        return None
    return plan


def needs_graph(plan: Plan, *tensors: Optional[torch.Tensor]) -> bool:
    """True when autograd would record this step: the plan's tensors are detached."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors) or any(t.requires_grad for t in plan.tensors)


_CELL_KINDS: dict[type, str] = {}  # filled on first use: cfc_cell/ltc_cell import nn.sequence


def _build(layer: nn.Module) -> Plan:
    """A new plan: the library's own cells only (never a subclass: it may change the math)."""
    global _hook_handle
    if _hook_handle is None:
        _hook_handle = register_optimizer_step_post_hook(_count_optimizer_step)
    if not _CELL_KINDS:
        from .cfc_cell import CfCCell, WiredCfCCell
        from .ltc_cell import LTCCell

        _CELL_KINDS.update({CfCCell: "cfc", WiredCfCCell: "wired-cfc", LTCCell: "ltc"})
    plan = Plan()
    try:
        with torch.no_grad():
            cell = plan.module(layer, "rnn_cell")
            kind = _CELL_KINDS.get(type(cell))
            if kind == "ltc":
                _build_ltc(plan, layer, cell)
            elif kind is not None and plan.attr(layer, "wired_mode") == (kind == "wired-cfc"):
                _build_cfc(plan, layer, cell)
            else:
                raise _NotCovered(f"a cell of type {type(cell).__name__}")
    except _NotCovered:
        plan.run = None
    plan.seal()
    return plan


def _detached(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach()  # shares storage and version with the parameter


# ----------------------------------------------------------------------------------------- CfC


class _CfCCellPlan:
    __slots__ = ("backbone", "mode", "weight", "bias", "w_tau", "A", "one")


def _cfc_cell(plan: Plan, cell: nn.Module) -> _CfCCellPlan:
    if _CELL_KINDS.get(type(cell)) != "cfc":
        raise _NotCovered(f"a sub-cell of type {type(cell).__name__}")
    cp = _CfCCellPlan()
    cp.backbone = []  # (fn, weight, bias): F.linear with a weight, an activation without
    backbone = plan.module(cell, "backbone")
    for child in plan.children(backbone) if backbone is not None else []:
        if type(child) is nn.Linear:
            cp.backbone.append((F.linear, _detached(plan.tensor(child, "weight")), _detached(plan.tensor(child, "bias"))))
        elif isinstance(child, nn.Dropout):
            plan.dropouts.append(child)
        elif type(child).__name__ == "Activation" and callable(getattr(child, "fn", None)):
            cp.backbone.append((child.fn, None, None))
        else:
            raise _NotCovered(f"backbone module {type(child).__name__}")
    mask = plan.tensor(cell, "sparsity_mask", buffer=True)

    def head(name: str, masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
        linear = plan.module(cell, name)
        if type(linear) is not nn.Linear:
            raise _NotCovered(f"{name} is a {type(linear).__name__}")
        weight, bias = plan.tensor(linear, "weight"), plan.tensor(linear, "bias")
        if weight is None or bias is None:
            raise _NotCovered(f"{name} without a weight or bias parameter")
        # as CfCCell._masked_linear: ff1 and ff2 only
        return (weight * mask if masked and mask is not None else weight.detach()), bias.detach()

    cp.mode = plan.attr(cell, "mode")
    if cp.mode == "pure":
        cp.weight, cp.bias = head("ff1", True)
        cp.w_tau, cp.A = _detached(plan.tensor(cell, "w_tau")), _detached(plan.tensor(cell, "A"))
        cp.one = cp.A.new_ones(1, 1)
    else:
        parts = [head("ff1", True), head("ff2", True), head("time_a", False), head("time_b", False)]
        cp.weight = torch.cat([w for w, _ in parts])  # (4U, Z): ff1 | ff2 | time_a | time_b
        cp.bias = torch.cat([b for _, b in parts])
    return cp


def _cfc_cell_step(cp: _CfCCellPlan, x_BI: torch.Tensor, h_BU: torch.Tensor, dt_B1: Optional[torch.Tensor]) -> torch.Tensor:
    """CfCCell._step from the plan: the same ops in the same order (one GEMM for the 4 heads)."""
    z_BZ = torch.cat((x_BI, h_BU), 1)
    for fn, weight, bias in cp.backbone:
        z_BZ = fn(z_BZ) if weight is None else fn(z_BZ, weight, bias)
    if cp.mode == "pure":
        ff1_BU = F.linear(z_BZ, cp.weight, cp.bias)
        return functional.cfc_pure_update(ff1_BU, cp.w_tau, cp.A, cp.one if dt_B1 is None else dt_B1)
    ff1_BU, ff2_BU, time_a_BU, time_b_BU = F.linear(z_BZ, cp.weight, cp.bias).chunk(4, 1)
    head1_BU, head2_BU = torch.tanh(ff1_BU), torch.tanh(ff2_BU)
    # time_a * 1 + time_b is time_a + time_b exactly: dt None equals dt = 1 bit for bit
    gate_BU = torch.sigmoid(time_a_BU + time_b_BU if dt_B1 is None else time_a_BU * dt_B1 + time_b_BU)
    if cp.mode == "no_gate":
        return head1_BU + gate_BU * head2_BU
    return head1_BU * torch.rsub(gate_BU, 1.0) + gate_BU * head2_BU  # rsub: 1.0 - gate, unwrapped


def _readout(plan: Plan, layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    fc = plan.module(layer, "fc")
    if type(fc) is nn.Identity:
        return torch.clone  # the output must not alias the state (the reference stacks a copy)
    if type(fc) is not nn.Linear:
        raise _NotCovered(f"fc is a {type(fc).__name__}")
    weight, bias = _detached(plan.tensor(fc, "weight")), _detached(plan.tensor(fc, "bias"))
    return lambda y_BM: F.linear(y_BM, weight, bias)


def _build_cfc(plan: Plan, layer: nn.Module, cell: nn.Module) -> None:
    readout = _readout(plan, layer)
    if _CELL_KINDS[type(cell)] == "cfc":
        cp = _cfc_cell(plan, cell)

        def run(x_BI, h_BU, dt_B1):
            h_BU = _cfc_cell_step(cp, x_BI, h_BU, dt_B1)
            return readout(h_BU), h_BU

        plan.run = run
        return
    sizes, motor = list(plan.attr(cell, "layer_sizes")), plan.attr(cell, "motor_size")
    cells = [_cfc_cell(plan, plan.module(cell, f"layer_{l}")) for l in range(len(sizes))]
    identity = readout is torch.clone

    def run_wired(x_BI, h_BU, dt_B1):  # WiredCfCCell._step: layer l reads layer l-1's new state
        feed_BI, states = x_BI, []
        for cp, h_layer in zip(cells, h_BU.split(sizes, 1)):
            feed_BI = _cfc_cell_step(cp, feed_BI, h_layer, dt_B1)
            states.append(feed_BI)
        y_BM = feed_BI[:, :motor]  # a view of the last layer, never of the concatenated state
        return (y_BM if identity else readout(y_BM)), torch.cat(states, 1)

    plan.run = run_wired


# ----------------------------------------------------------------------------------------- LTC


def _build_ltc(plan: Plan, layer: nn.Module, cell: nn.Module) -> None:
    readout = _readout(plan, layer)
    if readout is not torch.clone:
        raise _NotCovered("an LTC readout other than Identity")
    get = lambda name: plan.tensor(cell, name)  # noqa: E731
    positive, unfolds, epsilon, motor = (plan.attr(cell, a) for a in ("_positive", "ode_unfolds", "epsilon", "motor_size"))
    input_w, input_b = _detached(get("input_w")), _detached(get("input_b"))
    output_w, output_b = _detached(get("output_w")), _detached(get("output_b"))
    sensory_sigma, sensory_mu = get("sensory_sigma").detach(), get("sensory_mu").detach()
    sensory_w = positive(get("sensory_w")) * plan.tensor(cell, "sensory_sparsity_mask", buffer=True)
    # (2, 1, I, U): Σ_i σ · [w E, w] gives (numerator, denominator) of ltc_sensory_currents
    sensory_2BIU = torch.stack([sensory_w * get("sensory_erev"), sensory_w]).unsqueeze(1)
    cm, gleak, vleak = positive(get("cm")), positive(get("gleak")).contiguous(), get("vleak").detach().contiguous()
    cm_unit_11U = (cm / (cm.new_ones(1, 1) / unfolds)).unsqueeze(1)  # cm / (dt / K) at dt = 1
    w, mu, sigma, erev = positive(get("w")), get("mu").detach(), get("sigma").detach(), get("erev").detach()
    mask = plan.tensor(cell, "sparsity_mask", buffer=True)
    use_native = native.supports(cm, mu)
    if use_native:
        index = synapse_index(mask)
        pairs_4P = index.pack(w, mu, sigma, erev).contiguous()
    else:  # functional.ltc_ode_solve with the grids premultiplied
        w_masked = w * mask
        synapse_2BUU = torch.stack([w_masked * erev, w_masked]).unsqueeze(1)
        gleak_vleak = gleak * vleak

    def run(x_BI, v_BU, dt_B1):
        if input_w is not None:
            x_BI = x_BI * input_w
        if input_b is not None:
            x_BI = x_BI + input_b
        activation_BIU = torch.sigmoid(sensory_sigma * (x_BI.unsqueeze(-1) - sensory_mu))
        sensory_num_BU, sensory_den_BU = (activation_BIU * sensory_2BIU).sum(2)
        batch = x_BI.shape[0]
        if dt_B1 is None:
            cm_t_B1U = cm_unit_11U if batch == 1 else cm_unit_11U.expand(batch, 1, -1)
        else:
            cm_t_B1U = (cm / (dt_B1 / unfolds)).unsqueeze(1)
        if use_native:
            v_BU = native.ltc_forward(
                v_BU.contiguous(), sensory_num_BU.unsqueeze(1), sensory_den_BU.unsqueeze(1),
                cm_t_B1U.contiguous(), gleak, vleak, index.ptr_U1, index.pre_P, pairs_4P, unfolds, epsilon,
            )[:, 0]  # fmt: skip
        else:
            cm_t_BU = cm_t_B1U[:, 0]
            cm_gleak_BU = cm_t_BU + gleak
            for _ in range(unfolds):
                activation_BUU = torch.sigmoid(sigma * (v_BU.unsqueeze(-1) - mu))
                num_BU, den_BU = (activation_BUU * synapse_2BUU).sum(2)
                v_BU = (cm_t_BU * v_BU + gleak_vleak + (num_BU + sensory_num_BU)) / (
                    cm_gleak_BU + (den_BU + sensory_den_BU) + epsilon
                )
        y_BM = v_BU[:, :motor]
        if output_w is not None:
            y_BM = y_BM * output_w
        if output_b is not None:
            y_BM = y_BM + output_b
        return (y_BM.clone() if output_w is None and output_b is None else y_BM), v_BU

    plan.run = run
