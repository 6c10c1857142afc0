"""Headline Markdown tables from a bench_train.py --json file (used to write RESULTS.md).

    .venv/bin/python benchmarks/summarize_results.py benchmarks/raw/2026-12-04_full_threads2.json

Prints: training throughput per workload and batch for the default fused paths against ncps and
LSTM (with ratios, and the issue's quoted ncps figure where ncps could not run here), every
CfC/LTC implementation side by side, and memory (saved-for-backward MB and peak RSS growth).
"""

from __future__ import annotations

import json
import sys

# ncps 1.0.1 training throughput quoted in the issue (same machine, measured when it was idle,
# torch's default 2 threads): (workload, batch) -> (CfC, LTC) sequences/s.
ISSUE_NCPS = {
    ("HAR-like", 64): (5700, 190), ("HAR-like", 512): (9800, 80),
    ("Traffic-like", 64): (3900, 330), ("Traffic-like", 512): (7800, 270),
    ("Power-like", 64): (3100, 220), ("Power-like", 512): (8300, 220),
}  # fmt: skip


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main(path: str) -> None:
    data = json.loads(open(path).read())
    by = {(r["workload"], r["batch"], r["case"]): r for r in data["records"]}
    keys = sorted({(r["workload"], r["batch"]) for r in data["records"]},
                  key=lambda k: (["HAR-like", "Traffic-like", "Power-like", "smoke"].index(k[0]), k[1]))  # fmt: skip

    def rate(w, b, case):
        r = by.get((w, b, case))
        return r["seq_per_s"]["median"] if r and r["seq_per_s"] else None

    def fmt(v, digits=0):
        return "-" if v is None else f"{v:,.{digits}f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    rows = []
    for w, b in keys:
        cfc, ncfc, ltc, nltc, lstm = (rate(w, b, c) for c in ("tl-cfc-function", "ncps-cfc", "tl-ltc-native", "ncps-ltc", "lstm"))
        issue = ISSUE_NCPS.get((w, b))
        issue_ltc = "" if nltc is not None or issue is None else f" (issue: {ratio(ltc, issue[1])})"
        rows.append([w, b, fmt(cfc), fmt(ncfc), ratio(cfc, ncfc), fmt(ltc), fmt(nltc), ratio(ltc, nltc) + issue_ltc,
                     fmt(lstm), ratio(cfc, lstm), ratio(ltc, lstm)])  # fmt: skip
    print(_table(["workload", "B", "tl CfC", "ncps CfC", "CfC x", "tl LTC", "ncps LTC", "LTC x", "LSTM", "CfC/LSTM", "LTC/LSTM"], rows))
    print()
    cases = [c for c in dict.fromkeys(r["case"] for r in data["records"])]
    rows = [[w, b] + [fmt(rate(w, b, c)) for c in cases] for w, b in keys]
    print(_table(["workload", "B"] + cases, rows))
    print()
    rows = []
    for w, b in keys:
        cells = []
        for c in ("tl-cfc-function", "ncps-cfc", "tl-ltc-native", "ncps-ltc", "lstm"):
            r = by.get((w, b, c))
            cells.append("-" if not r or r.get("skipped") else f"{r['saved_mb']:.0f} / {r['rss_growth_mb']:.0f}")
        rows.append([w, b] + cells)
    print(_table(["workload", "B", "tl CfC", "ncps CfC", "tl LTC", "ncps LTC", "LSTM"], rows))


if __name__ == "__main__":
    main(sys.argv[1])
