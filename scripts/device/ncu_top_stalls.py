#!/usr/bin/env python3
"""Ranks the instructions of an Nsight Compute source page (scripts/device/ncu-attention.sh with
SOURCE=1) by warp stall samples: the kernel's stall reasons in total, then the top N instructions with
their three main reasons.

Usage: python3 scripts/device/ncu_top_stalls.py ncu-source-1.csv [N]
"""
import csv
import sys


def main():
    rows = list(csv.reader(open(sys.argv[1])))
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    head = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    cols = {name: i for i, name in enumerate(rows[head])}
    data = [r for r in rows[head + 1:] if len(r) == len(rows[head])]
    samples_col = cols["Warp Stall Sampling (All Samples)"]
    reasons = [c for c in rows[head] if c.startswith("stall_") and "Not Issued" not in c]

    def num(r, c):
        try:
            return int(r[cols[c]] or 0)
        except ValueError:
            return 0

    total = sum(int(r[samples_col] or 0) for r in data)
    print(f"{total} samples over {len(data)} instructions")
    by_reason = sorted(((sum(num(r, c) for r in data), c[6:]) for c in reasons), reverse=True)
    print("by reason:", ", ".join(f"{c} {v}" for v, c in by_reason[:8]))
    for r in sorted(data, key=lambda r: -int(r[samples_col] or 0))[:top_n]:
        n = int(r[samples_col] or 0)
        main3 = sorted(((num(r, c), c[6:]) for c in reasons), reverse=True)[:3]
        print(f"{n:7d} {100 * n / max(total, 1):5.1f}%  {r[cols['Source']][:64]:64}  "
              + " ".join(f"{c}={v}" for v, c in main3 if v))


if __name__ == "__main__":
    main()
