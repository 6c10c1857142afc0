"""Wirings: which neuron feeds which, and with what sign, in a wired LTC or CfC cell.

A wiring is a pair of polarity matrices over U neurons and I input features (sensory neurons):

    adjacency_matrix[src, dest]         in {-1, 0, +1}   (U, U)  neuron src -> neuron dest
    sensory_adjacency_matrix[src, dest] in {-1, 0, +1}   (I, U)  input feature src -> neuron dest

with -1 an inhibitory synapse, +1 an excitatory one and 0 none. Neurons 0..output_dim-1 are the
motor (output) neurons, as in ncps. ``layers`` lists the neuron indices of each layer, first layer
fed by the inputs; a wired CfC runs one sub-cell per layer in that order.

The classes carry the names and arguments of ``ncps.wirings`` 1.0.1 and, for the same arguments and
seed, build exactly the matrices ncps builds (its RNG call sequence is replayed, quirks included).
They differ from ncps where ncps misleads:

* A wiring is immutable. ``build(input_dim)`` returns a NEW built wiring and leaves the spec
  untouched, so one spec can be given to several layers of different input widths (case A11).
* ``get_config`` is JSON-serialisable, names its "class", has no side effects, and
  ``Wiring.from_config`` rebuilds identical matrices, before and after build (case A10).
* Arguments are validated at construction with messages that name them (case A12).

Shape legend (suffixes on names): U units (neurons), I input features, L layers.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Wiring", "FullyConnected", "Random", "NCP", "AutoNCP", "WIRINGS"]

_POLARITIES = (-1, 0, 1)


# ---------------------------------------------------------------------------------------------
# Argument checks (shared by every class)
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}. {hint}".rstrip())
    return value


def _check_fraction(name: str, value: Any, hint: str = "") -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must satisfy 0.0 <= {name} < 1.0, got {value}. {hint}".rstrip())
    return float(value)


def _polarity_matrix(name: str, value: Any, shape: tuple[int | None, int | None]) -> np.ndarray:
    """``value`` as a read-only int32 matrix of ``shape`` (None: any size), entries in {-1, 0, 1}."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular matrix, got ragged rows: {error}") from error
    if array.dtype == object or not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise TypeError(
            f"{name} must be a numeric matrix with entries in {{-1, 0, 1}}, got dtype {array.dtype}"
        )
    expected = tuple("any" if n is None else n for n in shape)
    if array.ndim != 2 or any(n is not None and n != m for n, m in zip(shape, array.shape)):
        raise ValueError(f"{name} must have shape {expected}, got shape {array.shape}")
    bad = np.unique(array[~np.isin(array, _POLARITIES)])
    if bad.size:
        raise ValueError(
            f"{name} entries must be polarities in {{-1, 0, 1}}, got values {bad[:5].tolist()}; "
            "use -1 for inhibitory, +1 for excitatory and 0 for no synapse"
        )
    return _frozen(array.astype(np.int32))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


# ---------------------------------------------------------------------------------------------
# The base class: an explicit wiring, and the contract every generated wiring follows
# ---------------------------------------------------------------------------------------------


class Wiring:
    """An immutable wiring given by explicit matrices; base class of the generated wirings.

    Construct one with ``Wiring.from_adjacency(adjacency, sensory_adjacency, output_dim, layers)``.
    Without ``sensory_adjacency`` the wiring is unbuilt and ``build(I)`` connects every input to
    every neuron with an excitatory (+1) synapse; with it the wiring is built for its I rows.

    Every wiring offers: ``units``, ``output_dim``, ``input_dim`` (None until built),
    ``is_built()``, ``build(input_dim) -> Wiring`` (a new built wiring; ``self`` if already built
    for that input_dim), ``adjacency_matrix`` (U, U) and ``sensory_adjacency_matrix`` (I, U) as
    read-only int32 arrays, ``num_layers``, ``neurons_of_layer(l)``, ``erev_initializer()``,
    ``sensory_erev_initializer()``, ``synapse_count``, ``sensory_synapse_count``,
    ``get_type_of_neuron(i)``, ``get_config()`` and ``Wiring.from_config(config)``.
    """

    def __init__(
        self,
        adjacency: Any,
        sensory_adjacency: Any = None,
        output_dim: int | None = None,
        layers: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if isinstance(adjacency, numbers.Integral):
            raise TypeError(
                f"Wiring(adjacency) takes a (U, U) polarity matrix, got the int {adjacency}: the "
                "mutable ncps Wiring(units) + add_synapse is not supported; build the matrix and "
                "call Wiring.from_adjacency(matrix)"
            )
        adjacency_UU = _polarity_matrix("adjacency", adjacency, (None, None))
        units = adjacency_UU.shape[0]
        if units == 0 or adjacency_UU.shape[1] != units:
            raise ValueError(
                f"adjacency must be a non-empty square (U, U) matrix, got shape {adjacency_UU.shape}"
            )
        output_dim = units if output_dim is None else _check_int("output_dim", output_dim, 1, units)
        layers_L = _check_layers(layers, units, output_dim)
        self._init_graph(units, output_dim, adjacency_UU, layers_L)
        if sensory_adjacency is not None:
            self._sensory_IU = _polarity_matrix("sensory_adjacency", sensory_adjacency, (None, units))
            rows = self._sensory_IU.shape[0]
            self._input_dim = _check_int("sensory_adjacency rows (input_dim)", rows, 1)

    @staticmethod
    def from_adjacency(
        adjacency: Any,
        sensory_adjacency: Any = None,
        output_dim: int | None = None,
        layers: Sequence[Sequence[int]] | None = None,
    ) -> Wiring:
        """A wiring with the given (U, U) and optional (I, U) polarity matrices.

        ``output_dim`` defaults to U (every neuron is an output); ``layers`` (a partition of
        0..U-1, list of index lists) defaults to one layer of all units. The motor neurons
        0..output_dim-1 must open the last layer, so that the first output_dim states of the last
        layer are the outputs.
        """
        return Wiring(adjacency, sensory_adjacency, output_dim, layers)

    def _init_graph(
        self, units: int, output_dim: int, adjacency_UU: np.ndarray | None, layers_L: list
    ) -> None:
        self._units = units
        self._output_dim = output_dim
        self._adjacency_UU = None if adjacency_UU is None else _frozen(adjacency_UU)
        self._layers_L = tuple(tuple(int(i) for i in layer) for layer in layers_L)
        self._input_dim: int | None = None
        self._sensory_IU: np.ndarray | None = None

    # -- dimensions and matrices ------------------------------------------------------------

    @property
    def units(self) -> int:
        return self._units

    @property
    def output_dim(self) -> int:
        return self._output_dim

    @property
    def input_dim(self) -> int | None:
        return self._input_dim

    def is_built(self) -> bool:
        return self._input_dim is not None

    @property
    def adjacency_matrix(self) -> np.ndarray:
        """(U, U) int32 polarities, read-only."""
        if self._adjacency_UU is None:
            raise ValueError(
                f"{self!r} draws its neuron-to-neuron synapses at build time (they depend on the "
                "input width); call wiring = wiring.build(input_dim) first"
            )
        return self._adjacency_UU

    @property
    def sensory_adjacency_matrix(self) -> np.ndarray | None:
        """(I, U) int32 polarities, read-only; None before build."""
        return self._sensory_IU

    def _require_built(self, what: str) -> np.ndarray:
        if self._sensory_IU is None:
            raise ValueError(
                f"{what} of {self!r} needs the input width: call wiring = wiring.build(input_dim) first"
            )
        return self._sensory_IU

    def erev_initializer(self, shape: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """A float copy of ``adjacency_matrix`` (reversal-potential signs); ``shape`` is ignored."""
        return self.adjacency_matrix.astype(dtype)

    def sensory_erev_initializer(self, shape: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """A float copy of ``sensory_adjacency_matrix``; ``shape`` is ignored as in ncps."""
        return self._require_built("sensory_erev_initializer").astype(dtype)

    @property
    def synapse_count(self) -> int:
        """Number of neuron-to-neuron synapses."""
        return int(np.abs(self.adjacency_matrix).sum())

    @property
    def sensory_synapse_count(self) -> int:
        """Number of input-to-neuron synapses."""
        return int(np.abs(self._require_built("sensory_synapse_count")).sum())

    # -- layers and neuron types -----------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self._layers_L)

    def neurons_of_layer(self, layer: int) -> list[int]:
        """Neuron indices of ``layer`` (0 = the layer fed by the inputs), as a new list."""
        hint = f"{type(self).__name__} has {self.num_layers} layer(s)"
        layer = _check_int("layer", layer, 0, self.num_layers - 1, hint)
        return list(self._layers_L[layer])

    get_neurons_of_layer = neurons_of_layer  # the ncps name

    def get_type_of_neuron(self, neuron: int) -> str:
        """"motor" for neurons 0..output_dim-1, else "inter" (NCP adds "command")."""
        neuron = _check_int("neuron", neuron, 0, self._units - 1)
        return "motor" if neuron < self._output_dim else "inter"

    # -- build ------------------------------------------------------------------------------

    def build(self, input_dim: int) -> Wiring:
        """A built copy of this wiring for ``input_dim`` input features; ``self`` is never changed.

        Returns ``self`` if it is already built for ``input_dim``; a different ``input_dim`` on a
        built wiring raises ValueError (give each layer the unbuilt spec instead).
        """
        input_dim = _check_int("input_dim", input_dim, 1)
        if self._input_dim is not None:
            if input_dim == self._input_dim:
                return self
            raise ValueError(
                f"{self!r} is already built for input_dim={self._input_dim} and cannot be rebuilt "
                f"for input_dim={input_dim}: pass the unbuilt wiring spec to each layer (build "
                "returns a new wiring and never changes the spec)"
            )
        adjacency_UU, sensory_IU = self._draw_for_build(input_dim)
        built = copy.copy(self)
        built._input_dim = input_dim
        built._sensory_IU = _frozen(sensory_IU)
        if adjacency_UU is not None:
            built._adjacency_UU = _frozen(adjacency_UU)
        return built

    def _draw_for_build(self, input_dim: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(new adjacency or None to keep it, sensory adjacency) for a build; subclasses override."""
        return None, np.ones((input_dim, self._units), dtype=np.int32)

    # -- config -------------------------------------------------------------------------------

    def _constructor_args(self) -> dict[str, Any]:
        return {
            "adjacency": self._adjacency_UU.tolist(),
            "sensory_adjacency": None if self._sensory_IU is None else self._sensory_IU.tolist(),
            "output_dim": self._output_dim,
            "layers": [list(layer) for layer in self._layers_L],
        }

    def get_config(self) -> dict[str, Any]:
        """A JSON-serialisable dict: "class", the constructor arguments, "input_dim" (None: unbuilt)."""
        return {"class": type(self).__name__, **self._constructor_args(), "input_dim": self._input_dim}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Wiring:
        """The wiring ``config`` describes (built if its "input_dim" is set), dispatched on "class".

        Also reads ncps configs, which lack "class": ``FullyConnected.from_config(ncps_config)``,
        and ncps's base-Wiring config (with "adjacency_matrix") through ``Wiring.from_config``.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict from get_config(), got {type(config).__name__}")
        args = dict(config)
        name = args.pop("class", None)
        if name is None and cls is Wiring and "adjacency_matrix" in args:
            args = {  # ncps's base Wiring.get_config layout
                "adjacency": args.pop("adjacency_matrix"),
                "sensory_adjacency": args.pop("sensory_adjacency_matrix", None),
                "output_dim": args.pop("output_dim", None),
                "input_dim": args.pop("input_dim", None),
                **args,
            }
            args.pop("units", None)
        if name is None and cls is Wiring and "adjacency" not in args:
            raise ValueError(f"config has no 'class' key; it must name one of {sorted(WIRINGS)}")
        target = cls if name is None else WIRINGS.get(name)
        if target is None:
            raise ValueError(f"config 'class' must be one of {sorted(WIRINGS)}, got {name!r}")
        if not issubclass(target, cls):
            raise ValueError(
                f"{cls.__name__}.from_config got a config of class {name!r}; use Wiring.from_config"
            )
        input_dim = args.pop("input_dim", None)
        params = list(inspect.signature(target.__init__).parameters.values())[1:]
        unknown = set(args) - {p.name for p in params}
        missing = {p.name for p in params if p.default is inspect.Parameter.empty} - set(args)
        if unknown or missing:
            problems = [f"unknown keys {sorted(unknown)}"] if unknown else []
            problems += [f"lacks required keys {sorted(missing)}"] if missing else []
            raise ValueError(
                f"config for {target.__name__} has {' and '.join(problems)}; expected keys: "
                f"'class', 'input_dim', {', '.join(repr(p.name) for p in params)}"
            )
        wiring = target(**args)
        return wiring if input_dim is None else wiring.build(input_dim)

    def __repr__(self) -> str:
        if type(self) is Wiring:  # explicit matrices are too long to show
            shown = {"units": self._units, "output_dim": self._output_dim}
        else:
            shown = self._constructor_args()
        text = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{type(self).__name__}({text}, input_dim={self._input_dim})"


def _check_layers(
    layers: Sequence[Sequence[int]] | None, units: int, output_dim: int
) -> list[list[int]]:
    if layers is None:
        return [list(range(units))]
    try:
        layers_L = [[_check_int("layers entry", i, 0, units - 1) for i in layer] for layer in layers]
    except TypeError as error:
        raise TypeError(
            f"layers must be a list of lists of neuron indices in [0, {units - 1}]: {error}"
        ) from error
    flat = sorted(i for layer in layers_L for i in layer)
    if flat != list(range(units)) or not all(layers_L):
        raise ValueError(
            f"layers must split the neurons 0..{units - 1} into non-empty lists, each neuron in "
            f"exactly one layer; got {layers_L}"
        )
    if layers_L[-1][:output_dim] != list(range(output_dim)):
        raise ValueError(
            f"the last layer must start with the motor neurons 0..{output_dim - 1} "
            f"(output_dim={output_dim}), got last layer {layers_L[-1]}; reorder your neurons so "
            "the outputs come first"
        )
    return layers_L


# ---------------------------------------------------------------------------------------------
# Generated wirings (ncps 1.0.1 algorithms)
# ---------------------------------------------------------------------------------------------


def _draw_polarities(rng: np.random.Generator, count: int, draws_per_synapse: int = 1) -> np.ndarray:
    """``count`` int32 polarities, each -1 with probability 1/3 else +1, drawn as ncps does.

    ncps calls ``rng.choice([-1, 1, 1])`` once per draw; that is ``rng.integers(0, 3)`` indexing
    the list, and one vectorised ``integers`` call yields the same stream as repeated scalar calls
    (the parity tests against ncps check this). With ``draws_per_synapse`` > 1 every synapse
    consumes that many draws and keeps the last, as ncps's Random.build does.
    """
    draws_PD = rng.integers(0, 3, size=(count, draws_per_synapse))
    return np.array([-1, 1, 1], dtype=np.int32)[draws_PD[:, -1]]


def _restored_generator(state: dict) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = copy.deepcopy(state)
    return rng


class FullyConnected(Wiring):
    """Every neuron feeds every neuron (``self_connections=False`` drops the diagonal) and, after
    build, every input feeds every neuron. Each polarity is -1 with probability 1/3, else +1,
    drawn by ``default_rng(erev_init_seed)`` row by row: first the (U, U) synapses at
    construction, then, continuing the same stream, the (I, U) sensory synapses at build.
    ``output_dim`` defaults to ``units``.
    """

    def __init__(
        self,
        units: int,
        output_dim: int | None = None,
        erev_init_seed: int = 1111,
        self_connections: bool = True,
    ) -> None:
        units = _check_int("units", units, 1)
        output_dim = units if output_dim is None else _check_int("output_dim", output_dim, 1, units)
        self._seed = _check_int("erev_init_seed", erev_init_seed, 0)
        if not isinstance(self_connections, (bool, np.bool_)):
            raise TypeError(
                f"self_connections must be a bool, got {type(self_connections).__name__} "
                f"{self_connections!r}"
            )
        self._self_connections = bool(self_connections)
        rng = np.random.default_rng(self._seed)
        has_synapse_UU = np.ones((units, units), dtype=bool)
        if not self._self_connections:
            np.fill_diagonal(has_synapse_UU, False)
        adjacency_UU = np.zeros((units, units), dtype=np.int32)
        # A boolean-mask assignment fills in row-major order: ncps's (src, dest) loop order.
        adjacency_UU[has_synapse_UU] = _draw_polarities(rng, int(has_synapse_UU.sum()))
        self._rng_state = rng.bit_generator.state  # build continues this stream, as ncps does
        self._init_graph(units, output_dim, adjacency_UU, [list(range(units))])

    def _draw_for_build(self, input_dim: int) -> tuple[None, np.ndarray]:
        rng = _restored_generator(self._rng_state)
        sensory_IU = _draw_polarities(rng, input_dim * self._units).reshape(input_dim, self._units)
        return None, sensory_IU

    def _constructor_args(self) -> dict[str, Any]:
        return {
            "units": self._units,
            "output_dim": self._output_dim,
            "erev_init_seed": self._seed,
            "self_connections": self._self_connections,
        }


class Random(Wiring):
    """A random sparse wiring: round(U·U·(1 - sparsity_level)) distinct (src, dest) pairs get a
    synapse, likewise round(I·U·(1 - sparsity_level)) sensory pairs at build; polarity -1 with
    probability 1/3, else +1. Uses ``default_rng(random_seed)`` as one stream across construction
    and build; like ncps it draws each sensory polarity twice and keeps the second.
    ``0.0 <= sparsity_level < 1.0``; ``output_dim`` defaults to ``units``.
    """

    def __init__(
        self,
        units: int,
        output_dim: int | None = None,
        sparsity_level: float = 0.0,
        random_seed: int = 1111,
    ) -> None:
        units = _check_int("units", units, 1)
        output_dim = units if output_dim is None else _check_int("output_dim", output_dim, 1, units)
        self._sparsity = _check_fraction("sparsity_level", sparsity_level, "(0.0 keeps every synapse)")
        self._seed = _check_int("random_seed", random_seed, 0)
        rng = np.random.default_rng(self._seed)
        adjacency_UU = np.zeros((units, units), dtype=np.int32)
        src_P, dest_P = self._choose_pairs(rng, units, units)
        adjacency_UU[src_P, dest_P] = _draw_polarities(rng, src_P.size)
        self._rng_state = rng.bit_generator.state
        self._init_graph(units, output_dim, adjacency_UU, [list(range(units))])

    def _choose_pairs(
        self, rng: np.random.Generator, n_src: int, n_dest: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(src_P, dest_P): round(n_src·n_dest·(1 - sparsity)) distinct pairs, in draw order."""
        count = int(np.round(n_src * n_dest * (1 - self._sparsity)))
        # Choosing among the pair indices consumes rng exactly like ncps's choice among the
        # row-major list of (src, dest) pairs: choice only looks at the population size.
        pair_P = rng.choice(n_src * n_dest, size=count, replace=False)
        return pair_P // n_dest, pair_P % n_dest

    def _draw_for_build(self, input_dim: int) -> tuple[None, np.ndarray]:
        rng = _restored_generator(self._rng_state)
        sensory_IU = np.zeros((input_dim, self._units), dtype=np.int32)
        src_P, dest_P = self._choose_pairs(rng, input_dim, self._units)
        # ncps draws each sensory polarity twice and keeps the second; kept for parity.
        sensory_IU[src_P, dest_P] = _draw_polarities(rng, src_P.size, draws_per_synapse=2)
        return None, sensory_IU

    def _constructor_args(self) -> dict[str, Any]:
        return {
            "units": self._units,
            "output_dim": self._output_dim,
            "sparsity_level": self._sparsity,
            "random_seed": self._seed,
        }


class NCP(Wiring):
    """A Neural Circuit Policy (Lechner et al. 2020): four layers, sensory -> inter -> command ->
    motor, with recurrent synapses among the command neurons.

    Neuron indices: motor 0..M-1, command M..M+C-1, inter M+C..U-1 (U = inter + command + motor);
    layers in order [inter, command, motor]. At build, with ``RandomState(seed)`` (all synapses
    are drawn then, so ``adjacency_matrix`` raises before build):

    1. each input feeds ``sensory_fanout`` distinct inter neurons; inter neurons left unfed get
       clip(I·sensory_fanout // inter, 1, I) random inputs;
    2. each inter neuron feeds ``inter_fanout`` distinct command neurons; unfed command neurons
       get clip(inter·inter_fanout // command, 1, command) random inter inputs (ncps clips by
       the command count; kept);
    3. ``recurrent_command_synapses`` random (command, command) synapses, repeats allowed;
    4. each motor neuron is fed by ``motor_fanin`` distinct command neurons; command neurons that
       feed none get clip(motor·motor_fanin // command, 1, motor) random motor targets.

    Every polarity is -1 or +1 with equal probability.
    """

    def __init__(
        self,
        inter_neurons: int,
        command_neurons: int,
        motor_neurons: int,
        sensory_fanout: int,
        inter_fanout: int,
        recurrent_command_synapses: int,
        motor_fanin: int,
        seed: int = 22222,
    ) -> None:
        n_inter = _check_int("inter_neurons", inter_neurons, 1)
        n_command = _check_int("command_neurons", command_neurons, 1)
        n_motor = _check_int("motor_neurons", motor_neurons, 1)
        from_inter = f"(it draws from the {n_inter} inter neurons)"
        from_command = f"(it draws from the {n_command} command neurons)"
        self._ncp_args = {
            "inter_neurons": n_inter,
            "command_neurons": n_command,
            "motor_neurons": n_motor,
            "sensory_fanout": _check_int("sensory_fanout", sensory_fanout, 1, n_inter, from_inter),
            "inter_fanout": _check_int("inter_fanout", inter_fanout, 1, n_command, from_command),
            "recurrent_command_synapses": _check_int(
                "recurrent_command_synapses", recurrent_command_synapses, 0
            ),
            "motor_fanin": _check_int("motor_fanin", motor_fanin, 1, n_command, from_command),
            "seed": _check_int("seed", seed, 0, 2**32 - 1),  # the range RandomState accepts
        }
        self._motor = list(range(n_motor))
        self._command = list(range(n_motor, n_motor + n_command))
        self._inter = list(range(n_motor + n_command, n_motor + n_command + n_inter))
        layers_L = [self._inter, self._command, self._motor]
        self._init_graph(n_inter + n_command + n_motor, n_motor, None, layers_L)

    def get_type_of_neuron(self, neuron: int) -> str:
        """"motor", "command" or "inter"."""
        neuron = _check_int("neuron", neuron, 0, self._units - 1)
        if neuron < len(self._motor):
            return "motor"
        return "command" if neuron < len(self._motor) + len(self._command) else "inter"

    def _draw_for_build(self, input_dim: int) -> tuple[np.ndarray, np.ndarray]:
        args = self._ncp_args
        rng = np.random.RandomState(args["seed"])
        adjacency_UU = np.zeros((self._units, self._units), dtype=np.int32)
        sensory_IU = np.zeros((input_dim, self._units), dtype=np.int32)
        sensory = list(range(input_dim))
        _fan_out(rng, sensory_IU, sensory, self._inter, args["sensory_fanout"], input_dim)
        n_command = len(self._command)
        _fan_out(rng, adjacency_UU, self._inter, self._command, args["inter_fanout"], n_command)
        for _ in range(args["recurrent_command_synapses"]):
            src = rng.choice(self._command)
            dest = rng.choice(self._command)
            adjacency_UU[src, dest] = rng.choice([-1, 1])
        _fan_in_motor(rng, adjacency_UU, self._command, self._motor, args["motor_fanin"])
        return adjacency_UU, sensory_IU

    def _constructor_args(self) -> dict[str, Any]:
        return dict(self._ncp_args)


def _fan_out(
    rng: np.random.RandomState,
    matrix: np.ndarray,
    sources: list[int],
    targets: list[int],
    fanout: int,
    fanin_cap: int,
) -> None:
    """ncps steps 1 and 2: every source feeds ``fanout`` targets, then unfed targets get sources."""
    unreached = list(targets)
    for src in sources:
        for dest in rng.choice(targets, size=fanout, replace=False):
            if dest in unreached:
                unreached.remove(dest)
            matrix[src, dest] = rng.choice([-1, 1])
    fanin = np.clip(int(len(sources) * fanout / len(targets)), 1, fanin_cap)
    for dest in unreached:
        for src in rng.choice(sources, size=fanin, replace=False):
            matrix[src, dest] = rng.choice([-1, 1])


def _fan_in_motor(
    rng: np.random.RandomState,
    adjacency_UU: np.ndarray,
    command: list[int],
    motor: list[int],
    fanin: int,
) -> None:
    """ncps step 4: each motor neuron is fed by ``fanin`` command neurons; idle ones get targets."""
    unused = list(command)
    for dest in motor:
        for src in rng.choice(command, size=fanin, replace=False):
            if src in unused:
                unused.remove(src)
            adjacency_UU[src, dest] = rng.choice([-1, 1])
    fanout = np.clip(int(len(motor) * fanin / len(command)), 1, len(motor))
    for src in unused:
        for dest in rng.choice(motor, size=fanout, replace=False):
            adjacency_UU[src, dest] = rng.choice([-1, 1])


class AutoNCP(NCP):
    """An NCP sized from ``units`` and ``output_size`` alone, as ncps sizes it:

        command = max(int(0.4 (units - output_size)), 1),  inter = units - output_size - command
        with density d = 1 - sparsity_level:
        sensory_fanout = max(int(inter d), 1),  inter_fanout = motor_fanin = max(int(command d), 1)
        recurrent_command_synapses = max(int(2 command d), 1)

    Requires ``1 <= output_size < units - 2`` and ``0.0 <= sparsity_level < 1.0``, the range the
    message states and the check applies (ncps documents [0.0, 0.9] but checks [0.1, 1.0]; here
    values below 0.1 are accepted and 1.0, which asks for no synapses, is rejected).
    """

    def __init__(
        self, units: int, output_size: int, sparsity_level: float = 0.5, seed: int = 22222
    ) -> None:
        units = _check_int("units", units, 4, hint="(an NCP needs 1 motor, 1 command, 2 inter neurons)")
        output_size = _check_int(
            "output_size",
            output_size,
            1,
            units - 3,
            f"With units = {units}, at least 3 neurons must remain for the inter and command layers; "
            f"about 0.3 * units ({max(1, int(0.3 * units))}) is typical",
        )
        sparsity = _check_fraction("sparsity_level", sparsity_level, "(0.0: densest, 0.5: default)")
        density = 1.0 - sparsity
        command = max(int(0.4 * (units - output_size)), 1)
        inter = units - output_size - command
        super().__init__(
            inter,
            command,
            output_size,
            sensory_fanout=max(int(inter * density), 1),
            inter_fanout=max(int(command * density), 1),
            recurrent_command_synapses=max(int(command * density * 2), 1),
            motor_fanin=max(int(command * density), 1),
            seed=seed,
        )
        self._auto_args = {
            "units": units,
            "output_size": output_size,
            "sparsity_level": sparsity,
            "seed": self._ncp_args["seed"],
        }

    def _constructor_args(self) -> dict[str, Any]:
        return dict(self._auto_args)


# Dispatch table of Wiring.from_config: the "class" a config names -> the class that rebuilds it.
WIRINGS: dict[str, type[Wiring]] = {
    cls.__name__: cls for cls in (Wiring, FullyConnected, Random, NCP, AutoNCP)
}
