"""Training throughput, memory and inference latency: torchliquid fused CfC/LTC vs ncps vs LSTM/GRU.

    .venv/bin/python benchmarks/bench_train.py --quick            # ~1-2 minutes, the headline table
    .venv/bin/python benchmarks/bench_train.py                    # full: 3 workloads x B 64..2048
    .venv/bin/python benchmarks/bench_train.py --smoke            # seconds; CI proves the script runs
    .venv/bin/python benchmarks/bench_train.py --json out.json --threads 2 --cases ncps-cfc,tl-cfc-function

One training step = forward of a batch of sequences, loss on the last step (cross-entropy for
HAR-like, MSE otherwise), backward, Adam step. Everything runs in ONE process; for each workload
and batch the contenders are warmed up, then timed in interleaved rounds (one step each per
round, after `--settle` untimed steps of its own so that no timed step follows another model's
cold) until each has `--rounds` samples or its `--budget-s` is spent; medians and quartiles of
sequences/s are reported. Contenders whose saved activations (measured at batch 8, scaled
linearly) would exceed `--mem-fraction` of free RAM are skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from factory import CREATORS, Workload, training_flops_per_sequence_cfc  # noqa: E402

from torchliquid.train.optim import adam  # noqa: E402

WORKLOADS = {
    "har": Workload("HAR-like", 16, 561, 6, True),
    "traffic": Workload("Traffic-like", 32, 7, 1, False),
    "power": Workload("Power-like", 32, 6, 1, False),
    "smoke": Workload("smoke", 4, 8, 2, True),
}
ALL_CASES = [c for c in CREATORS if c != "tl-cfc-compile"]  # compile: opt-in (--compile), ~1 min
QUICK_CASES = ["tl-cfc-function", "ncps-cfc", "tl-ltc-native", "ncps-ltc", "lstm"]
SETTLE_BELOW_S = 0.25  # settle steps (--settle) precede timed steps shorter than this
HEADLINE = {"cfc": ("tl-cfc-function", "ncps-cfc"), "ltc": ("tl-ltc-native", "ncps-ltc")}


def _loss(w: Workload, pred, target):
    return F.cross_entropy(pred, target) if w.classify else F.mse_loss(pred, target)


def _data(w: Workload, batch: int, device):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, w.seq_len, w.inputs, generator=g).to(device)
    if w.classify:
        return x, torch.randint(0, w.outputs, (batch,), generator=g).to(device)
    return x, torch.randn(batch, w.outputs, generator=g).to(device)


class Contender:
    """One model + Adam on one workload and batch, with its timing samples."""

    def __init__(self, name: str, w: Workload, device) -> None:
        self.name, self.family = name, CREATORS[name][0]
        torch.manual_seed(0)
        self.model = CREATORS[name][1](w).to(device)
        self.opt = adam(self.model.parameters(), lr=1e-3)  # the trainer's, for every contender
        self.w, self.device = w, device
        self.timing = harness.Timing()
        self.spent_s = self.last_s = 0.0

    def step(self, x, y, timed: bool = True) -> None:
        def backward(loss):
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

        timing = self.timing if timed else harness.Timing()
        harness.timed_step(lambda: _loss(self.w, self.model(x), y), backward, self.device, timing)
        self.last_s = timing.forward[-1] + timing.backward[-1]
        self.spent_s += self.last_s

    def saved_bytes(self, x) -> int:
        return harness.saved_tensor_bytes(lambda: self.model(x))


def _infer_ms(contender: Contender, w: Workload, device, repeats: int) -> float:
    """Median latency (ms) of one inference step: batch 1, one time step, no autograd."""
    x = torch.randn(1, 1, w.inputs, device=device)
    model = contender.model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            harness.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            harness.synchronize(device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    model.train()
    return 1e3 * statistics.median(times)


# Step time (s) per (workload, contender, batch) measured so far: predicts the next batch's cost.
_step_s: dict[tuple[str, str], tuple[int, float]] = {}


def _predicted_peak_bytes(c: Contender, x, batch: int) -> float:
    """Peak RSS growth of one step at `batch`: 4x the saved activations at batch 8, scaled.

    Saved bytes are exact and linear in B; RSS adds backward temporaries: 3.4x for ncps LTC
    (16 GiB RSS for 4.7 GiB saved, Traffic-like B=512), ~3x for the fused paths. An RSS probe
    at batch 8 was tried and is useless: one-time allocations dominate it."""
    probe = min(batch, 8)
    # clone: a slice would keep (and be counted with) the storage of the whole batch
    return 4 * c.saved_bytes(x[:probe].clone()) * batch / probe


def run_batch(w: Workload, batch: int, cases: list[str], args, device, log) -> list[harness.Record]:
    x, y = _data(w, batch, device)
    records, contenders = [], []
    free = harness.psutil.virtual_memory().available if harness.psutil else float("inf")
    for name in cases:
        record = harness.Record(w.name, batch, name, CREATORS[name][0])
        try:
            previous = _step_s.get((w.name, name))
            if previous and previous[1] * batch / previous[0] > args.max_step_s:
                raise TimeoutError(f"predicted {previous[1] * batch / previous[0]:.1f} s/step (from B="
                                   f"{previous[0]}) > --max-step-s {args.max_step_s}")  # fmt: skip
            c = Contender(name, w, device)
            predicted = _predicted_peak_bytes(c, x, batch)
            if predicted > args.mem_fraction * free:
                raise MemoryError(f"predicted {predicted / 2**30:.1f} GiB peak RSS growth "
                                  f"> {args.mem_fraction:.0%} of {free / 2**30:.1f} GiB free")  # fmt: skip
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                c.step(x, y)
                if time.perf_counter() - t0 > args.budget_s:
                    break
            c.timing = harness.Timing()  # warm-up samples are not reported
            c.spent_s = 0.0
            contenders.append((c, record))
        except Exception as err:  # a missing/failed contender must not stop the others
            record.skipped = f"{type(err).__name__}: {err}"[:200]
            log(f"  skip {name}: {record.skipped}")
        records.append(record)
    # Interleaved rounds: every contender one step per round, until samples or budget run out.
    for _ in range(args.rounds):
        active = [c for c, _ in contenders if c.spent_s < args.budget_s]
        if not active:
            break
        for c in active:
            # A step right after another model's finds cold caches and heap pages the other
            # model's frees gave back to the OS; training is a stream of like steps, so fast
            # contenders first settle untimed (at B = 64 this cost ncps CfC 20 %, us ~5 %).
            if c.last_s < SETTLE_BELOW_S:
                for _ in range(args.settle):
                    c.step(x, y, timed=False)
            c.step(x, y)
    for c, record in contenders:
        total = c.timing.total
        record.seq_per_s = harness.summarize(total, batch)
        _step_s[(w.name, c.name)] = (batch, statistics.median(total))
        record.forward_ms = 1e3 * statistics.median(c.timing.forward)
        record.backward_ms = 1e3 * statistics.median(c.timing.backward)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        with harness.PeakRSS() as rss:
            record.saved_mb = c.saved_bytes(x) / 2**20
            c.step(x, y)
        record.rss_growth_mb = rss.growth / 2**20
        if device.type == "cuda":  # on a GPU the activations live in device memory, not RSS
            record.device_peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        if batch == min(args.batches):
            record.infer_ms = _infer_ms(c, w, device, args.infer_repeats)
    return records


def _ratio(records, batch, workload, num, den):
    by_case = {r.case: r for r in records if r.batch == batch and r.workload == workload and r.seq_per_s}
    if num in by_case and den in by_case:
        return by_case[num].seq_per_s["median"] / by_case[den].seq_per_s["median"]
    return None


def print_tables(records: list[harness.Record], log) -> list[dict]:
    rows = []
    for r in records:
        if r.skipped:
            rows.append([r.workload, r.batch, r.case, "skipped", "", "", "", "", "", "", r.skipped[:60]])
            continue
        s = r.seq_per_s
        spread = f"{s['q1']:.0f}-{s['q3']:.0f} (n={s['n']})"
        rows.append([
            r.workload, r.batch, r.case, f"{s['median']:.0f}", spread, f"{r.forward_ms:.1f}",
            f"{r.backward_ms:.1f}", f"{r.saved_mb:.1f}", f"{r.rss_growth_mb:.0f}",
            "" if r.infer_ms is None else f"{r.infer_ms:.2f}", "",
        ])  # fmt: skip
    header = ["workload", "B", "contender", "seq/s", "IQR seq/s", "fwd ms", "bwd+opt ms", "saved MB",
              "RSS+ MB", "infer ms", "note"]  # fmt: skip
    log(harness.format_table(rows, header))
    ratios, ratio_rows = [], []
    for workload in dict.fromkeys(r.workload for r in records):
        for batch in sorted({r.batch for r in records if r.workload == workload}):
            entry = {"workload": workload, "batch": batch}
            for family, (ours, theirs) in HEADLINE.items():
                entry[f"{family}_vs_ncps"] = _ratio(records, batch, workload, ours, theirs)
                entry[f"{family}_vs_lstm"] = _ratio(records, batch, workload, ours, "lstm")
            mem = {r.case: r.rss_growth_mb for r in records if r.workload == workload and r.batch == batch and not r.skipped}
            if mem.get("ncps-ltc") and "tl-ltc-native" in mem:
                entry["ltc_rss_growth_fraction_of_ncps"] = mem["tl-ltc-native"] / max(mem["ncps-ltc"], 1e-9)
            ratios.append(entry)
            fmt = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
            ratio_rows.append([workload, batch] + [fmt(entry[k]) for k in
                              ("cfc_vs_ncps", "cfc_vs_lstm", "ltc_vs_ncps", "ltc_vs_lstm")])  # fmt: skip
    log("\nratios of training throughput (torchliquid fused default / other):")
    log(harness.format_table(ratio_rows, ["workload", "B", "CfC/ncps", "CfC/LSTM", "LTC/ncps", "LTC/LSTM"]))
    return ratios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="headline subset, ~1-2 minutes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile CfC variant")
    p.add_argument("--workloads", default=None, help="comma list of " + ",".join(WORKLOADS))
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--cases", default=None, help="comma list of " + ",".join(CREATORS))
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=None, help="timed steps per contender")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--settle", type=int, default=1,
                   help=f"untimed steps before each timed step of a contender faster than {SETTLE_BELOW_S} s/step "
                        "(0: time the first step after another model's, cold)")
    p.add_argument("--budget-s", type=float, default=None, help="timing budget per contender and batch")
    p.add_argument("--mem-fraction", type=float, default=0.35, help="skip above this share of free RAM")
    p.add_argument("--max-step-s", type=float, default=None, help="skip a contender whose step is predicted slower")
    p.add_argument("--infer-repeats", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write machine-readable results here")
    args = p.parse_args(argv)

    if args.smoke:
        defaults = dict(workloads="smoke", batches="4", cases=",".join(ALL_CASES), rounds=1, budget_s=5.0, max_step_s=5.0)
        args.warmup, args.infer_repeats = 1, 3
        args.threads = args.threads or 1  # tiny tensors: a second thread only adds fork/join
    elif args.quick:
        defaults = dict(workloads="har,traffic,power", batches="64,512", cases=",".join(QUICK_CASES), rounds=5, budget_s=3.0, max_step_s=1.5)
    else:
        defaults = dict(workloads="har,traffic,power", batches="64,256,512,2048", cases=",".join(ALL_CASES), rounds=10, budget_s=10.0, max_step_s=10.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cases = args.cases.split(",")
    if args.compile and "tl-cfc-compile" not in cases:
        cases.append("tl-cfc-compile")
    unknown = [c for c in cases if c not in CREATORS]
    if unknown:
        p.error(f"unknown --cases {unknown}; choose from {list(CREATORS)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script deprecation

    log = lambda *a: print(*a, flush=True)  # noqa: E731
    machine = harness.machine_info(device)
    log(f"machine: {machine}")
    log(f"intra-op threads: {torch.get_num_threads()} (set with --threads; the test suite uses 1)")
    load = machine.get("loadavg", [0.0])[0]
    if torch.get_num_threads() > 1 and load > 0.5 * (machine["logical_cores"] or 1):
        note = (f"WARNING: load average {load} on {machine['logical_cores']} cores: with {torch.get_num_threads()} "
                "threads every parallel region waits for a descheduled thread; timings will be erratic "
                "(seen here: LSTM 8,600 -> 45 seq/s). Use --threads 1 on a shared machine.")  # fmt: skip
        log(note)
    gemm = harness.gemm_ceiling_gflops(device, n=256 if args.smoke else 2048)
    log(f"GEMM ceiling: {gemm:.1f} GFLOP/s (fp32 {256 if args.smoke else 2048}^3 matmul, best of 5)")

    records, notes = [], []
    for key in args.workloads.split(","):
        w = WORKLOADS[key]
        log(f"\n== {w.name}: T={w.seq_len}, inputs={w.inputs}, outputs={w.outputs}")
        if w.seq_len > 8 * w.inputs:  # field case A17 / ncps #29
            note = (f"WARNING {w.name}: T={w.seq_len} >> {w.inputs} features per step: every step pays "
                    "a recurrent update for little input; consider stacking features into fewer steps")  # fmt: skip
            notes.append(note)
            log(note)
        for batch in args.batches:
            log(f"-- batch {batch}")
            records += run_batch(w, batch, cases, args, device, log)

    log("")
    ratios = print_tables(records, log)
    for r in records:
        if r.workload == "HAR-like" and r.batch == 512 and r.case in ("tl-cfc-function", "ncps-cfc") and r.seq_per_s:
            flops = training_flops_per_sequence_cfc(WORKLOADS["har"]) * r.seq_per_s["median"] / 1e9
            log(f"effective training GFLOP/s, {r.case} HAR-like B=512: {flops:.1f} ({flops / gemm:.0%} of the GEMM ceiling)")
            notes.append(f"{r.case} HAR-like B=512 effective {flops:.1f} GFLOP/s = {flops / gemm:.0%} of ceiling")
    if args.json:
        out = {"machine": machine, "args": vars(args), "gemm_gflops": gemm,
               "records": [r.as_dict() for r in records], "ratios": ratios, "notes": notes}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=1))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
