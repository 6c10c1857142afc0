"""Conversion between ncps 1.0.1 (``ncps.torch``, ``ncps.wirings``) and torchliquid.

    from torchliquid.compat import from_ncps, to_ncps
    model = from_ncps(ncps_model)         # CfC, LTC, CfCCell, WiredCfCCell, LTCCell or a wiring
    ncps_model = to_ncps(model)           # the reverse

Weights: torchliquid modules use ncps's parameter names, so an ncps ``state_dict`` (a checkpoint)
loads directly into the torchliquid module of the same arguments with ``load_state_dict`` (strict).
``from_ncps`` builds that module from an ncps instance and copies the weights.

Wirings convert to the same class and arguments when ncps keeps them (FullyConnected, Random,
AutoNCP) and the rebuilt matrices equal the ncps ones; otherwise (NCP, whose seed ncps does not
keep; hand-edited or custom wirings) to an explicit ``Wiring.from_adjacency`` with the same
matrices and layers.

Known differences kept on purpose (documented, not converted away):
  * A wired CfC on a single-layer wiring (FullyConnected, Random) outputs the motor neurons here
    and every unit in ncps (field case A08); to_ncps refuses such a model with a projection,
    which ncps cannot run.
  * ncps's LTCCell defaults to implicit_param_constraints=False, torchliquid's to True (A03);
    conversion always passes the flag explicitly.

ncps is imported inside the functions only: ``import torchliquid`` never imports it (A15).
Conversion runs under a forked torch RNG, so it does not change the caller's random stream.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from torchliquid.nn import CfC, CfCCell, LTC, LTCCell, WiredCfCCell
from torchliquid.nn import wirings as tl_wirings

# ncps's activation module class name -> torchliquid activation name
_NCPS_ACTIVATIONS = {"LeCun": "lecun_tanh", "ReLU": "relu", "Tanh": "tanh", "GELU": "gelu", "SiLU": "silu"}

# ncps wiring class -> torchliquid spec of the same arguments (where ncps keeps them all)
_WIRING_ARGS_FROM_NCPS: dict[str, Callable[[Any], tl_wirings.Wiring]] = {
    "FullyConnected": lambda w: tl_wirings.FullyConnected(
        w.units, w.output_dim, erev_init_seed=w._erev_init_seed, self_connections=w.self_connections
    ),
    "Random": lambda w: tl_wirings.Random(w.units, w.output_dim, sparsity_level=w.sparsity_level, random_seed=w._random_seed),
    "AutoNCP": lambda w: tl_wirings.AutoNCP(w.units, w._output_size, sparsity_level=w._sparsity_level, seed=w._seed),
}


def _ncps():
    try:
        import ncps.torch
        import ncps.wirings
    except ImportError as error:
        raise ImportError("torchliquid.compat needs ncps: pip install ncps==1.0.1") from error
    return ncps


def _same_matrices(ours: tl_wirings.Wiring, theirs: Any) -> bool:
    if not np.array_equal(ours.adjacency_matrix, theirs.adjacency_matrix):
        return False
    if theirs.sensory_adjacency_matrix is None:
        return ours.sensory_adjacency_matrix is None
    return ours.sensory_adjacency_matrix is not None and np.array_equal(
        ours.sensory_adjacency_matrix, theirs.sensory_adjacency_matrix
    )


def wiring_from_ncps(wiring: Any) -> tl_wirings.Wiring:
    """The torchliquid wiring equal to the ncps ``wiring`` (built iff it is built)."""
    name = type(wiring).__name__
    built = wiring.is_built()
    if name in _WIRING_ARGS_FROM_NCPS and type(wiring).__module__.startswith("ncps."):
        try:
            spec = _WIRING_ARGS_FROM_NCPS[name](wiring)
        except (TypeError, ValueError):  # arguments ncps accepts and torchliquid rejects (A12)
            spec = None
        if spec is not None and not built:
            return spec
        if spec is not None and _same_matrices(spec.build(wiring.input_dim), wiring):
            return spec.build(wiring.input_dim)
    if not built and name in ("NCP", "AutoNCP"):
        raise ValueError(
            f"cannot convert an unbuilt ncps {name}: ncps draws its synapses at build time and does "
            "not keep the seed; call wiring.build(input_dim) first or build the torchliquid "
            "wiring with the same arguments and seed"
        )
    layers = [list(wiring.get_neurons_of_layer(layer)) for layer in range(wiring.num_layers)]
    return tl_wirings.Wiring.from_adjacency(
        np.asarray(wiring.adjacency_matrix),
        None if not built else np.asarray(wiring.sensory_adjacency_matrix),
        output_dim=wiring.output_dim,
        layers=layers,
    )


@functools.lru_cache(maxsize=None)
def _explicit_ncps_wiring_class() -> type:
    ncps = _ncps()

    class ExplicitWiring(ncps.wirings.Wiring):
        """An ncps wiring with given matrices and layers (ncps has no such class)."""

        def __init__(self, adjacency_UU, sensory_IU, output_dim, layers):
            super().__init__(adjacency_UU.shape[0])
            self.adjacency_matrix = np.array(adjacency_UU, dtype=np.int32)
            self.set_output_dim(output_dim)
            self._layers = [list(layer) for layer in layers]
            if sensory_IU is not None:
                self.input_dim = sensory_IU.shape[0]
                self.sensory_adjacency_matrix = np.array(sensory_IU, dtype=np.int32)

        @property
        def num_layers(self):
            return len(self._layers)

        def get_neurons_of_layer(self, layer_id):
            return list(self._layers[layer_id])

        def build(self, input_shape):
            if self.input_dim is None:  # torchliquid's unbuilt explicit wiring: all inputs excitatory
                super().build(input_shape)
                self.sensory_adjacency_matrix[:] = 1
            else:
                super().build(input_shape)

    return ExplicitWiring


def wiring_to_ncps(wiring: tl_wirings.Wiring) -> Any:
    """The ncps wiring equal to the torchliquid ``wiring`` (built iff it is built)."""
    ncps = _ncps()
    config = wiring.get_config()
    name = config.pop("class")
    input_dim = config.pop("input_dim", None)
    theirs = None
    if name in ("FullyConnected", "Random", "NCP", "AutoNCP"):
        try:
            theirs = getattr(ncps.wirings, name)(**config)
        except (TypeError, ValueError):  # arguments ncps rejects: fall back to the matrices
            theirs = None
    if input_dim is None:
        if theirs is not None:
            return theirs
        if name != "Wiring":
            raise ValueError(f"cannot convert the unbuilt {wiring!r} to ncps exactly; build it first")
    elif theirs is not None:
        theirs.build(input_dim)
        if _same_matrices(wiring, theirs):
            return theirs
    layers = [wiring.neurons_of_layer(layer) for layer in range(wiring.num_layers)]
    return _explicit_ncps_wiring_class()(
        wiring.adjacency_matrix, wiring.sensory_adjacency_matrix, wiring.output_dim, layers
    )


# ----------------------------------------------------------------------------------------------
# ncps -> torchliquid
# ----------------------------------------------------------------------------------------------


def _backbone_args(cell: Any) -> dict[str, Any]:
    """activation, backbone_units/layers/dropout of an ncps CfCCell, read off its modules."""
    if cell.backbone is None:
        return {"activation": "lecun_tanh", "backbone_units": 128, "backbone_layers": 0, "backbone_dropout": 0.0}
    modules = list(cell.backbone)
    activation = type(modules[1]).__name__
    if activation not in _NCPS_ACTIVATIONS:
        raise ValueError(f"unknown ncps backbone activation {activation}; expected one of {sorted(_NCPS_ACTIVATIONS)}")
    dropout = next((m.p for m in modules if isinstance(m, nn.Dropout)), 0.0)
    return {
        "activation": _NCPS_ACTIVATIONS[activation],
        "backbone_units": modules[0].out_features,
        "backbone_layers": cell.backbone_layers,
        "backbone_dropout": dropout,
    }


def _mapping(value: Any) -> Any:
    return value if value in ("affine", "linear") else None  # ncps silently ignores other strings


def _cfc_from_ncps(module: Any) -> CfC:
    ncps = _ncps()
    common = dict(
        proj_size=module.proj_size,
        return_sequences=module.return_sequences,
        batch_first=module.batch_first,
        mixed_memory=module.use_mixed,
    )
    if isinstance(module.rnn_cell, ncps.torch.WiredCfCCell):
        cell = module.rnn_cell
        return CfC(module.input_size, wiring_from_ncps(cell._wiring), mode=cell._layers[0].mode, **common)
    cell = module.rnn_cell
    backbone = _backbone_args(cell)
    return CfC(module.input_size, cell.hidden_size, mode=cell.mode, **backbone, **common)


def _cfc_cell_from_ncps(cell: Any) -> CfCCell:
    backbone = _backbone_args(cell)
    mask = None if cell.sparsity_mask is None else cell.sparsity_mask.detach().cpu().numpy().T
    return CfCCell(
        cell.input_size,
        cell.hidden_size,
        cell.mode,
        backbone_activation=backbone["activation"],
        backbone_units=backbone["backbone_units"] if cell.backbone is not None else 0,
        backbone_layers=backbone["backbone_layers"],
        backbone_dropout=backbone["backbone_dropout"],
        sparsity_mask=mask,
    )


def _ltc_cell_args(cell: Any) -> dict[str, Any]:
    return dict(
        input_mapping=_mapping(cell._input_mapping),
        output_mapping=_mapping(cell._output_mapping),
        ode_unfolds=cell._ode_unfolds,
        epsilon=cell._epsilon,
        implicit_param_constraints=bool(cell._implicit_param_constraints),
    )


def _ltc_from_ncps(module: Any) -> LTC:
    cell = module.rnn_cell
    return LTC(
        module.input_size,
        wiring_from_ncps(cell._wiring),
        return_sequences=module.return_sequences,
        batch_first=module.batch_first,
        mixed_memory=module.use_mixed,
        **_ltc_cell_args(cell),
    )


def _ltc_cell_from_ncps(cell: Any) -> LTCCell:
    return LTCCell(wiring_from_ncps(cell._wiring), in_features=cell._wiring.input_dim, **_ltc_cell_args(cell))


def _wired_cfc_cell_from_ncps(cell: Any) -> WiredCfCCell:
    return WiredCfCCell(cell._wiring.input_dim, wiring_from_ncps(cell._wiring), cell._layers[0].mode)


_FROM_NCPS: dict[str, Callable[[Any], nn.Module]] = {
    "CfC": _cfc_from_ncps,
    "LTC": _ltc_from_ncps,
    "CfCCell": _cfc_cell_from_ncps,
    "LTCCell": _ltc_cell_from_ncps,
    "WiredCfCCell": _wired_cfc_cell_from_ncps,
}


def _copy_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())  # strict: the names are shared by design
    reference = next((t for t in source.state_dict().values() if t.is_floating_point()), None)
    if reference is not None:
        target.to(dtype=reference.dtype, device=reference.device)
    return target.train(source.training)


def from_ncps(module: Any) -> Any:
    """The torchliquid equivalent of an ncps module (with its weights) or of an ncps wiring.

    Supported: ncps.torch CfC, LTC, CfCCell, WiredCfCCell, LTCCell and ncps.wirings wirings.

    Example:
        >>> import ncps.torch
        >>> theirs = ncps.torch.CfC(3, 8)
        >>> ours = from_ncps(theirs)
        >>> x = torch.randn(2, 5, 3)
        >>> bool(torch.allclose(ours(x)[0], theirs(x)[0], atol=1e-6))
        True
    """
    ncps = _ncps()
    if isinstance(module, ncps.wirings.Wiring):
        return wiring_from_ncps(module)
    name = type(module).__name__
    if not type(module).__module__.startswith("ncps.torch") or name not in _FROM_NCPS:
        raise TypeError(
            f"from_ncps converts ncps.torch modules {sorted(_FROM_NCPS)} and ncps wirings, got "
            f"{type(module).__module__}.{name}"
        )
    with torch.random.fork_rng(devices=[]):
        ours = _FROM_NCPS[name](module)
    return _copy_weights(module, ours)


# ----------------------------------------------------------------------------------------------
# torchliquid -> ncps
# ----------------------------------------------------------------------------------------------


def _cfc_to_ncps(model: CfC) -> nn.Module:
    ncps = _ncps()
    common = dict(
        proj_size=model.proj_size,
        return_sequences=model.return_sequences,
        batch_first=model.batch_first,
        mixed_memory=model.use_mixed,
        mode=model.mode,
    )
    if not model.wired_mode:
        return ncps.torch.CfC(
            model.input_size,
            model.state_size,
            activation=model.activation,
            backbone_units=model.backbone_units,
            backbone_layers=model.backbone_layers,
            backbone_dropout=model.backbone_dropout,
            **common,
        )
    last_layer = model.rnn_cell.layer_sizes[-1]
    if model.proj_size is not None and last_layer != model.wiring.output_dim:
        raise ValueError(
            f"ncps 1.0.1 cannot run this model: its wired CfC feeds the whole last wiring layer "
            f"({last_layer} units) to proj_size's Linear({model.wiring.output_dim}, {model.proj_size}) "
            "(field case A08); use a multi-layer wiring (NCP/AutoNCP) or no projection"
        )
    return ncps.torch.CfC(model.input_size, wiring_to_ncps(model.wiring), **common)


def _ltc_to_ncps(model: LTC) -> nn.Module:
    ncps = _ncps()
    cell = model.rnn_cell
    return ncps.torch.LTC(
        model.input_size,
        wiring_to_ncps(model.wiring),
        return_sequences=model.return_sequences,
        batch_first=model.batch_first,
        mixed_memory=model.use_mixed,
        input_mapping=cell.input_mapping,
        output_mapping=cell.output_mapping,
        ode_unfolds=cell.ode_unfolds,
        epsilon=cell.epsilon,
        implicit_param_constraints=cell.implicit_param_constraints,
    )


def _cfc_cell_to_ncps(cell: CfCCell) -> nn.Module:
    config = cell.config()
    config.pop("class")
    mask = config.pop("sparsity_mask")
    return _ncps().torch.CfCCell(**config, sparsity_mask=None if mask is None else np.asarray(mask))


def _ltc_cell_to_ncps(cell: LTCCell) -> nn.Module:
    return _ncps().torch.LTCCell(
        wiring_to_ncps(cell.wiring),
        in_features=cell.sensory_size,
        input_mapping=cell.input_mapping,
        output_mapping=cell.output_mapping,
        ode_unfolds=cell.ode_unfolds,
        epsilon=cell.epsilon,
        implicit_param_constraints=cell.implicit_param_constraints,
    )


def _wired_cfc_cell_to_ncps(cell: WiredCfCCell) -> nn.Module:
    return _ncps().torch.WiredCfCCell(cell.input_size, wiring_to_ncps(cell.wiring), cell.mode)


_TO_NCPS: dict[type, Callable[[Any], nn.Module]] = {
    CfC: _cfc_to_ncps,
    LTC: _ltc_to_ncps,
    CfCCell: _cfc_cell_to_ncps,
    LTCCell: _ltc_cell_to_ncps,
    WiredCfCCell: _wired_cfc_cell_to_ncps,
}


def to_ncps(module: Any) -> Any:
    """The ncps 1.0.1 equivalent of a torchliquid module (with its weights) or wiring."""
    if isinstance(module, tl_wirings.Wiring):
        return wiring_to_ncps(module)
    converter = _TO_NCPS.get(type(module))
    if converter is None:
        raise TypeError(
            f"to_ncps converts {sorted(c.__name__ for c in _TO_NCPS)} and torchliquid wirings, got "
            f"{type(module).__module__}.{type(module).__name__}"
        )
    with torch.random.fork_rng(devices=[]):
        theirs = converter(module)
    return _copy_weights(module, theirs)
