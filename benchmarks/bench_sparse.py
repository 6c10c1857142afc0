"""Does a sparse wiring pay? Field case A18: dense vs 70 %-sparse NCP wirings, CfC and LTC.

    .venv/bin/python benchmarks/bench_sparse.py                 # B = 64, T = 32, I = 8, 128 units
    .venv/bin/python benchmarks/bench_sparse.py --smoke         # seconds; tests prove the script runs
    .venv/bin/python benchmarks/bench_sparse.py --threads 2 --rounds 20 --json out.json

A18 (ncps #19): masks are full (U, U) and (I, U) tensors multiplied in every step, so a 70 %-sparse
NCP is no cheaper than a dense one, in time or in parameter count. Contenders (seed 0 each; the
same wiring seed, so torchliquid and ncps draw the same NCP):

    ltc-dense         LTC(I, FullyConnected(U)), implementation "auto" (the native C kernel)
    ltc-sparse        LTC(I, AutoNCP(U, 32, sparsity_level=0.7)), "auto": only existing synapses
    ltc-sparse-masked the same layer, "torch-dense": masked (B, U, U) grids, ncps's method
    ltc-sparse-list   the same layer, "torch-sparse": torch ops over the synapse list
    ncps-ltc-sparse   ncps 1.0.1 LTC on the same wiring
    cfc-dense / cfc-sparse / ncps-cfc-sparse   CfC(I, wiring) likewise (ncps's WiredCfCCell:
                      masks on ff1 and ff2; "auto" multiplies each mask in once per call)

One training step = forward, MSE on the last step's output, backward, Adam (torch's fused step).
Contenders are timed in interleaved rounds after `--warmup` steps, each timed step preceded by an
untimed one of its own (bench_train's settling). The table gives median sequences/s, total and
effective parameters (torchliquid.nn.count_parameters: entries a zero mask does not remove), and
the largest output difference of each torchliquid LTC implementation from "reference" on one batch.
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from torchliquid.nn import CfC, LTC, count_parameters  # noqa: E402
from torchliquid.nn.wirings import AutoNCP, FullyConnected  # noqa: E402
from torchliquid.train.optim import adam  # noqa: E402

CASES = ["ltc-dense", "ltc-sparse", "ltc-sparse-masked", "ltc-sparse-list", "ncps-ltc-sparse",
         "cfc-dense", "cfc-sparse", "ncps-cfc-sparse"]  # fmt: skip
MOTORS = 32
IMPLEMENTATION = {"ltc-sparse-masked": "torch-dense", "ltc-sparse-list": "torch-sparse"}


def build(case: str, inputs: int, units: int, sparsity: float) -> torch.nn.Module:
    torch.manual_seed(0)
    family, sparse = case.split("-")[-2] if case.startswith("ncps") else case.split("-")[0], "sparse" in case
    if case.startswith("ncps"):
        import ncps.torch
        import ncps.wirings

        wiring = ncps.wirings.AutoNCP(units, MOTORS, sparsity_level=sparsity)
        layer = ncps.torch.LTC if family == "ltc" else ncps.torch.CfC
        return layer(inputs, wiring, return_sequences=False)
    wiring = AutoNCP(units, MOTORS, sparsity_level=sparsity) if sparse else FullyConnected(units)
    layer = LTC if family == "ltc" else CfC
    return layer(inputs, wiring, return_sequences=False, implementation=IMPLEMENTATION.get(case, "auto"))


class Contender:
    def __init__(self, case: str, inputs: int, units: int, sparsity: float) -> None:
        self.case = case
        self.model = build(case, inputs, units, sparsity)
        self.opt = adam(self.model.parameters(), lr=1e-3)
        self.timing = harness.Timing()

    def step(self, x: torch.Tensor, target: torch.Tensor, timed: bool = True) -> None:
        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

        forward = lambda: F.mse_loss(self.model(x)[0][:, : target.shape[1]], target)  # noqa: E731
        harness.timed_step(forward, backward, torch.device("cpu"), self.timing if timed else harness.Timing())


def output_differences(x: torch.Tensor, units: int, sparsity: float) -> dict[str, float]:
    """max |y - y_reference| of each sparse-wiring LTC implementation, same weights, one batch."""
    model = build("ltc-sparse", x.shape[2], units, sparsity)
    with torch.no_grad():
        model.implementation = "reference"
        want = model(x)[0]
        found = {}
        for case in ("ltc-sparse", "ltc-sparse-masked", "ltc-sparse-list"):
            model.implementation = IMPLEMENTATION.get(case, "auto")
            found[case] = float((model(x)[0] - want).abs().max())
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: proves the script runs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=32, help="sequence length T")
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--sparsity", type=float, default=0.7, help="AutoNCP sparsity_level of the sparse wiring")
    harness.add_run_arguments(p, CASES)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.units, args.warmup, args.rounds = 4, 3, 40, 1, 1
    machine = harness.start_cpu_run(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.inputs, generator=g)
    target = torch.randn(args.batch, min(MOTORS, args.units), generator=g)
    contenders = [Contender(case, args.inputs, args.units, args.sparsity) for case in args.cases.split(",")]
    for c in contenders:
        for _ in range(args.warmup):
            c.step(x, target, timed=False)
    for _ in range(args.rounds):
        for c in contenders:
            c.step(x, target, timed=False)
            c.step(x, target)
    differences = output_differences(x, args.units, args.sparsity)
    results, rates = [], {}
    for c in contenders:
        rates[c.case] = harness.summarize(c.timing.total, args.batch)["median"]
        counted = count_parameters(c.model) if not c.case.startswith("ncps") else None
        total = counted.total if counted else sum(p.numel() for p in c.model.parameters() if p.requires_grad)
        results.append({"case": c.case, "seq_per_s": rates[c.case], "params": total,
                        "effective_params": counted.effective if counted else None,
                        "max_abs_diff_vs_reference": differences.get(c.case)})  # fmt: skip
    rows = []
    for r in results:
        family = r["case"].split("-")[1] if r["case"].startswith("ncps") else r["case"].split("-")[0]
        dense = rates.get(f"{family}-dense")
        diff = r["max_abs_diff_vs_reference"]
        rows.append([r["case"], f"{r['seq_per_s']:,.0f}", f"{r['seq_per_s'] / dense:.2f}x" if dense else "-",
                     f"{r['params']:,}", f"{r['effective_params']:,}" if r["effective_params"] is not None else "-",
                     f"{diff:.1e}" if diff is not None else "-"])  # fmt: skip
    print(f"B={args.batch}, T={args.steps}, I={args.inputs}, {args.units} units; sparse = AutoNCP({args.units}, "
          f"{MOTORS}, sparsity_level={args.sparsity})")  # fmt: skip
    print(harness.format_table(rows, ["case", "seq/s", "x dense wiring", "params", "effective", "max |y - ref|"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
