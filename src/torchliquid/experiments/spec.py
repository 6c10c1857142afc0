"""Matrix files (TOML) -> typed, validated cell specs.

A *matrix* is the list of training runs of a study. It is data, not code: the runner executes
each :class:`CellSpec` in its own process. The study's matrix is not a full cross product, so a
file is a union of small cross products (``[[grid]]`` tables) over shared ``[defaults]``, plus
optional ``[[override]]`` tables that change scalar settings of the cells they match::

    [matrix]
    name = "thesis"
    description = "..."

    [defaults]                 # any key below may also appear in a [[grid]]
    models = ["ltc", "cfc"]
    epochs = 50
    lr = 1e-3                  # the learning rate of ONE process
    lr_scaling = "linear"      # linear: lr x processes; none: lr as written
    seeds = [0]
    units = 64
    # max_windows = 2000       # cap windows per split (quick runs)
    # data_dir = "data"        # relative to the directory the runner is started from
    # backend = "auto"         # auto (gloo on CPU, nccl on GPU) | gloo | nccl
    # train_args = ["--threads", "2"]   # passed verbatim to `torchliquid train`

    [[grid]]
    datasets = ["har"]
    devices = ["cpu", "gpu", "gpu:2", "gpu:4"]
    batch_sizes = [64, 128, 256, 512]

    [[override]]
    match = { dataset = "sine", device = ["gpu:2", "gpu:4"] }
    set = { epochs = 10 }

Devices: ``cpu`` (one process), ``cpu:N`` (N processes, DDP over gloo), ``gpu`` / ``gpu:N``
(N GPUs, one process each). ``batch_size`` is per process, as in ``torchliquid train``.

A cell's id is readable and stable: ``<dataset>-<model>-<device>-b<batch>-s<seed>-<hash>``,
where the hash covers the whole resolved config, so rerunning the same file finds the same ids
and changing any setting of a cell (epochs, lr, ...) makes it a new cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

#: Datasets and models of the study. The names are checked here so a typo fails before hours of
#: runs, not at the 40th cell.
DATASETS = ("sine", "har", "traffic", "power")
MODELS = ("cfc", "ltc")
LR_SCALINGS = ("linear", "none")
BACKENDS = ("auto", "gloo", "nccl")
#: Device kinds: "cpu[:N]" and "gpu[:N]"; the value is the display name of one unit.
DEVICE_KINDS = {"cpu": "CPU", "gpu": "GPU"}

LIST_KEYS = ("datasets", "models", "devices", "batch_sizes", "seeds")
SCALAR_KEYS = ("epochs", "lr", "lr_scaling", "units", "max_windows", "data_dir", "backend", "train_args")
MATCH_KEYS = ("dataset", "model", "device", "batch_size", "seed")
TOP_LEVEL_KEYS = ("matrix", "defaults", "grid", "override")
REQUIRED_LIST_KEYS = ("datasets", "devices", "batch_sizes", "models")

DEFAULTS: dict[str, Any] = {"seeds": [0], "epochs": 50, "lr": 1e-3, "lr_scaling": "linear", "units": 64,
                            "max_windows": None, "data_dir": None, "backend": "auto", "train_args": []}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DeviceSpec:
    """Where a cell runs: ``kind`` ("cpu" or "gpu") and ``nproc`` processes (one per GPU)."""

    kind: str
    nproc: int = 1

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"device kind must be one of {sorted(DEVICE_KINDS)}, got {self.kind!r}")
        if not _is_int(self.nproc) or self.nproc < 1:
            raise ValueError(f"device process count must be an integer >= 1, got {self.nproc!r}")

    @classmethod
    def parse(cls, text: Any) -> "DeviceSpec":
        """``"cpu"``, ``"cpu:2"``, ``"gpu"``, ``"gpu:4"`` -> DeviceSpec; ValueError otherwise."""
        allowed = "'cpu', 'cpu:N', 'gpu' or 'gpu:N' (N >= 1)"
        if not isinstance(text, str):
            raise ValueError(f"device must be a string, one of {allowed}; got {text!r}")
        kind, _, count = text.strip().lower().partition(":")
        if kind not in DEVICE_KINDS or (count and not count.isdigit()) or count == "0":
            raise ValueError(f"unknown device {text!r}: must be one of {allowed}")
        return cls(kind, int(count) if count else 1)

    def __str__(self) -> str:
        return self.kind if self.nproc == 1 else f"{self.kind}:{self.nproc}"

    @property
    def display(self) -> str:
        """Human label for tables: CPU, 2 CPU procs, GPU, 2 GPUs."""
        if self.nproc == 1:
            return DEVICE_KINDS[self.kind]
        return f"{self.nproc} GPUs" if self.kind == "gpu" else f"CPU x{self.nproc} procs"


@dataclass(frozen=True)
class CellSpec:
    """One training run of the matrix (everything that determines its numbers).

    Attributes:
        dataset, model: study names (see :data:`DATASETS`, :data:`MODELS`).
        device: canonical device string (``"cpu"``, ``"cpu:2"``, ``"gpu"``, ``"gpu:4"``).
        batch_size: sequences per optimiser step PER PROCESS.
        epochs: passes over the training split.
        base_lr: the learning rate of one process; see :attr:`lr`.
        lr_scaling: ``"linear"`` multiplies ``base_lr`` by the process count, ``"none"`` keeps it.
        seed: model/split seed.
        units: hidden units.
        max_windows: windows kept per split, None for all.
        data_dir: dataset folder passed to ``--data-dir``, None for the default search.
        backend: ``auto`` | ``gloo`` | ``nccl`` for multi-process cells.
        train_args: extra ``torchliquid train`` arguments, passed verbatim.
    """

    dataset: str
    model: str
    device: str
    batch_size: int
    epochs: int = 50
    base_lr: float = 1e-3
    lr_scaling: str = "linear"
    seed: int = 0
    units: int = 64
    max_windows: Optional[int] = None
    data_dir: Optional[str] = None
    backend: str = "auto"
    train_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: must be one of {list(DATASETS)}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: must be one of {list(MODELS)}")
        # Canonicalise "gpu:1" -> "gpu" so two spellings are one cell (frozen: set via object).
        object.__setattr__(self, "device", str(DeviceSpec.parse(self.device)))
        for name, minimum in (("batch_size", 1), ("epochs", 0), ("seed", 0), ("units", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.max_windows is not None and (not _is_int(self.max_windows) or self.max_windows < 1):
            raise ValueError(f"max_windows must be an integer >= 1 or unset, got {self.max_windows!r}")
        if isinstance(self.base_lr, bool) or not isinstance(self.base_lr, (int, float)) \
                or not 0 < self.base_lr < float("inf"):
            raise ValueError(f"lr must be a positive finite number, got {self.base_lr!r}; the study uses 1e-3")
        object.__setattr__(self, "base_lr", float(self.base_lr))
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {list(LR_SCALINGS)}, got {self.lr_scaling!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a string path or unset, got {self.data_dir!r}")
        args = self.train_args
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"train_args must be a list of strings, got {args!r}")
        object.__setattr__(self, "train_args", tuple(args))

    # -- derived ----------------------------------------------------------------------------

    @property
    def device_spec(self) -> DeviceSpec:
        return DeviceSpec.parse(self.device)

    @property
    def nproc(self) -> int:
        """Processes launched (1 = a plain process, >1 = torch.distributed.run)."""
        return self.device_spec.nproc

    @property
    def lr(self) -> float:
        """Effective learning rate passed to every process (base_lr x nproc when linear)."""
        return self.base_lr * (self.nproc if self.lr_scaling == "linear" else 1)

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.device_spec.kind == "gpu" else "gloo"

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.nproc

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready config (lists for tuples); :meth:`from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["train_args"] = list(self.train_args)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def cell_id(self) -> str:
        # sort_keys + repr-exact floats: the same config always hashes the same, on any machine.
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        device = self.device.replace(":", "x")
        return f"{self.dataset}-{self.model}-{device}-b{self.batch_size}-s{self.seed}-{digest}"


@dataclass(frozen=True)
class MatrixSpec:
    """A parsed matrix file: its name, description, source and cells in file order."""

    name: str
    description: str
    cells: tuple[CellSpec, ...]
    source: str = "<memory>"
    text: str = ""

    def __post_init__(self) -> None:
        ids = [c.cell_id for c in self.cells]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"{self.source}: the same cell appears twice: {dup}; "
                             "grids must not overlap (use [[override]] to change a cell)")

    def cell(self, cell_id: str) -> CellSpec:
        for c in self.cells:
            if c.cell_id == cell_id:
                return c
        raise KeyError(f"no cell {cell_id!r} in matrix {self.name!r}")


def load_matrix(path: str | Path) -> MatrixSpec:
    """Read and validate a matrix TOML file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad TOML, unknown key or value; the message names the file, the table and
            the key, and lists the allowed values.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass a matrix TOML file, e.g. configs/quick.toml")
    if not path.is_file():
        raise FileNotFoundError(f"matrix file {path} does not exist; see configs/quick.toml and configs/thesis.toml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (UTF-8) file; expected a matrix TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return parse_matrix(data, source=str(path), text=text)


def parse_matrix(data: Mapping[str, Any], source: str = "<memory>", text: str = "") -> MatrixSpec:
    """Build a :class:`MatrixSpec` from already-parsed TOML (see the module docstring)."""
    _check_keys(data, TOP_LEVEL_KEYS, source, "top level")
    meta = data.get("matrix", {})
    _check_keys(meta, ("name", "description"), source, "[matrix]")
    defaults = {**DEFAULTS, **_settings(data.get("defaults", {}), source, "[defaults]")}
    grids = data.get("grid", [])
    if not isinstance(grids, list) or not grids:
        raise ValueError(f"{source}: needs at least one [[grid]] table with datasets, devices and batch_sizes")
    cells: list[CellSpec] = []
    for i, grid in enumerate(grids, 1):
        where = f"[[grid]] #{i}"
        settings = {**defaults, **_settings(grid, source, where)}
        cells.extend(_expand(settings, source, where))
    for i, override in enumerate(data.get("override", []), 1):
        cells = _apply_override(cells, override, source, f"[[override]] #{i}")
    name = meta.get("name") or Path(source).stem
    return MatrixSpec(name=str(name), description=str(meta.get("description", "")), cells=tuple(cells),
                      source=source, text=text)


# -- helpers ------------------------------------------------------------------------------------

def _check_keys(table: Any, allowed: Iterable[str], source: str, where: str) -> None:
    if not isinstance(table, Mapping):
        raise ValueError(f"{source}: {where} must be a table, got {table!r}")
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise ValueError(f"{source}: {where}: unknown key {key!r}; allowed keys: {list(allowed)}")


def _settings(table: Any, source: str, where: str) -> dict[str, Any]:
    """Validate the shape of a [defaults]/[[grid]] table (lists where lists belong)."""
    _check_keys(table, LIST_KEYS + SCALAR_KEYS, source, where)
    out = dict(table)
    for key in LIST_KEYS:
        if key in out and (not isinstance(out[key], list) or not out[key]):
            raise ValueError(f"{source}: {where}: key {key!r} must be a non-empty list, got {out[key]!r}")
    for key in SCALAR_KEYS:
        if key in out and isinstance(out[key], list) and key != "train_args":
            raise ValueError(f"{source}: {where}: key {key!r} takes one value, got the list {out[key]!r}; "
                             "use one [[grid]] per value")
    return out


def _expand(settings: Mapping[str, Any], source: str, where: str) -> list[CellSpec]:
    for key in REQUIRED_LIST_KEYS:
        if key not in settings:
            raise ValueError(f"{source}: {where}: missing key {key!r} (set it here or in [defaults])")
    cells = []
    for dataset in settings["datasets"]:
        for model in settings["models"]:
            for device in settings["devices"]:
                for batch in settings["batch_sizes"]:
                    for seed in settings["seeds"]:
                        values = {"dataset": dataset, "model": model, "device": device, "batch_size": batch,
                                  "seed": seed, **{k: settings[k] for k in SCALAR_KEYS}}
                        cells.append(_make_cell(values, source, where))
    return cells


def _make_cell(values: Mapping[str, Any], source: str, where: str) -> CellSpec:
    values = dict(values)
    values["base_lr"] = values.pop("lr")
    try:
        return CellSpec(**values)
    except ValueError as exc:
        raise ValueError(f"{source}: {where}: {exc}") from None


def _apply_override(cells: list[CellSpec], override: Any, source: str, where: str) -> list[CellSpec]:
    _check_keys(override, ("match", "set"), source, where)
    match, changes = override.get("match", {}), override.get("set", {})
    _check_keys(match, MATCH_KEYS, source, f"{where} match")
    _check_keys(changes, SCALAR_KEYS, source, f"{where} set")
    if not changes:
        raise ValueError(f"{source}: {where}: 'set' is empty; nothing to override")
    # Devices are compared canonically so "gpu:1" in a match finds "gpu" cells.
    wanted = {k: [v] if not isinstance(v, list) else v for k, v in match.items()}
    if "device" in wanted:
        try:
            wanted["device"] = [str(DeviceSpec.parse(d)) for d in wanted["device"]]
        except ValueError as exc:
            raise ValueError(f"{source}: {where} match key 'device': {exc}") from None
    out, hits = [], 0
    for cell in cells:
        if all(getattr(cell, k) in v for k, v in wanted.items()):
            hits += 1
            values = {**cell.to_dict(), **changes}
            values["lr"] = values.pop("lr", cell.base_lr)
            values.pop("base_lr", None)
            cell = _make_cell(values, source, where)
        out.append(cell)
    if not hits:
        raise ValueError(f"{source}: {where}: match {dict(match)} selects no cell; check the values "
                         f"(datasets {sorted({c.dataset for c in cells})}, devices {sorted({c.device for c in cells})})")
    return out
