"""In-process A/B of the C kernels: a git revision's build against the working tree's.

    .venv/bin/python benchmarks/ab_native.py --base HEAD~1                      # HAR-like, B=64
    .venv/bin/python benchmarks/ab_native.py --base main --workload traffic --batch 512
    .venv/bin/python benchmarks/ab_native.py --base HEAD --smoke               # seconds (tests)

Why: this VM's speed drifts by +-25 % over minutes with nothing else running, so two separate
benchmark runs cannot resolve a change of a few percent (RESULTS.md, "Machine and method"). Here
both builds of `nn/_fused_csrc*.py` (the base revision's and the working tree's) are compiled and
loaded into ONE process, and one training step runner (bench_train's contender, its model, data
and Adam) alternates between them in blocks of steps (`--blocks` x `--steps`, each block after one
untimed step); drift then slows both alike. Prints the median step time of each and their ratio.
Only the C source differs between the two sides; Python code is the working tree's for both.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import WORKLOADS, Contender, _data  # noqa: E402

from torchliquid.nn import _fused_native as native  # noqa: E402

CSRC = "src/torchliquid/nn"


def _base_sources(revision: str, folder: Path):
    """The `_fused_csrc` module of `revision`, imported from a temporary package."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    names = subprocess.run(["git", "ls-tree", "--name-only", revision, f"{CSRC}/"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    package = folder / "base_csrc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in (n for n in names if Path(n).name.startswith("_fused_csrc")):
        text = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=root, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        (package / Path(name).name).write_text(text)
    sys.path.insert(0, str(folder))
    import base_csrc._fused_csrc as base

    return base


def _build(sources) -> object:
    """Compile `sources` (a _fused_csrc module) with the loader's flags and cache."""
    live = native._fused_csrc
    native._fused_csrc = sources
    try:
        return native._compile()
    finally:
        native._fused_csrc = live


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision whose C kernels are 'base' (default HEAD)")
    p.add_argument("--workload", default="har", choices=sorted(WORKLOADS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--case", default="tl-cfc-function", help="bench_train contender (one using the C kernels)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=60, help="alternating blocks (half each side)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per block")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.workload, args.batch, args.blocks, args.steps = "smoke", 4, 2, 1
    torch.set_num_threads(args.threads)
    if not native.available():
        print(f"native kernels unavailable: {native.failure()}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        libraries = {"base": _build(_base_sources(args.base, Path(tmp))), "tree": _build(native._fused_csrc)}

    def use(side: str) -> None:
        native._lib = libraries[side]
        native._fns.clear()  # ctypes functions are bound to one library

    w = WORKLOADS[args.workload]
    x, y = _data(w, args.batch, torch.device("cpu"))
    contender = Contender(args.case, w, torch.device("cpu"))
    times: dict[str, list[float]] = {"base": [], "tree": []}
    use("base")
    for _ in range(3):
        contender.step(x, y, timed=False)
    for block in range(args.blocks):
        side = ("base", "tree")[block % 2]
        use(side)
        contender.step(x, y, timed=False)  # settle: first step on the other build's caches
        for _ in range(args.steps):
            start = time.perf_counter()
            contender.step(x, y, timed=False)
            times[side].append(time.perf_counter() - start)
    base, tree = (statistics.median(times[s]) for s in ("base", "tree"))
    print(f"{w.name} B={args.batch} {args.case}, {args.threads} thread(s), {len(times['tree'])} steps a side: "
          f"base ({args.base}) {1e3 * base:.3f} ms, working tree {1e3 * tree:.3f} ms, tree/base {tree / base:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
