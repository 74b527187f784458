#!/usr/bin/env python3
"""Where a kernel's instructions and warp time go, per source line and per function, from Nsight
Compute's source page with CUDA lines (scripts/device/ncu-attention.sh with SOURCE=2 on a build
configured with -DCMAKE_CUDA_FLAGS=-lineinfo, which writes $OUT/ncu-lines-N.csv).

Prints the totals (instructions executed, warp-state samples), each file's share, the functions of
the repository's files that the lines fall in (a function runs from its definition's line to the
next definition in the file), and the top lines with their three main stall reasons. With a second
CSV it prints, per line and per function, what the second case adds to the first (A/B of two cases
or two builds; lines match by file and number, so compare builds of the same source).

Usage: python3 scripts/device/ncu_lines.py CASE.csv [BASELINE.csv] [--top N] [--repo DIR]
"""
import argparse
import collections
import csv
import os
import re

# A device function's or kernel's definition: the name before its "(", on the line of
# __forceinline__ / __global__ or (a kernel's name after __launch_bounds__) on the next one.
FUNC_START = re.compile(r"__forceinline__\s+[\w:<>,\s\*&]+?\b(\w+)\s*\(")
KERNEL_START = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w*)")
NAME = re.compile(r"^\s*(\w+)\s*\(")


def load(path):
    """Per (file, line): instructions executed, warp samples, stall reasons; and each line's text."""
    inst, samples, text = collections.Counter(), collections.Counter(), {}
    stalls = collections.defaultdict(collections.Counter)
    fname, cols, width = None, None, 0
    for row in csv.reader(open(path)):
        if not row:
            continue
        if row[0] == "File Path":
            fname = row[1]
            continue
        if row[0] == "Line No":
            cols = {name: i for i, name in enumerate(row)}  # "Source" twice: the SASS column wins
            width = len(row)
            continue
        # Source-line rows only (their SASS rows follow with an empty line number).
        if row[0] in ("Function Name", "") or cols is None or len(row) != width:
            continue
        try:
            key = (fname, int(row[0]))
            inst[key] += int(row[cols["Instructions Executed"]] or 0)
            samples[key] += int(row[cols["Warp Stall Sampling (All Samples)"]] or 0)
        except ValueError:
            continue
        text[key] = row[1].strip()
        for name, i in cols.items():
            if name.startswith("stall_") and "Not Issued" not in name:
                stalls[key][name[6:]] += int(row[i] or 0) if row[i].isdigit() else 0
    return inst, samples, stalls, text


def functions(path, repo):
    """[(first line, name)] of the repository file that `path` names (matched by its tail), or []."""
    parts = path.split("/")
    for k in range(len(parts)):
        local = os.path.join(repo, *parts[k:])
        if os.path.isfile(local):
            starts, lines = [], open(local, errors="replace").read().split("\n")
            for n, line in enumerate(lines, 1):
                m, k = FUNC_START.search(line), KERNEL_START.search(line)
                if m:
                    starts.append((n, m.group(1)))
                elif k:
                    name = k.group(1)
                    if not name and n < len(lines) and NAME.match(lines[n]):
                        name = NAME.match(lines[n]).group(1)
                    starts.append((n, name or "(kernel)"))
            return starts
    return []


def by_function(counter, repo, cache):
    out = collections.Counter()
    for (f, line), v in counter.items():
        if f not in cache:
            cache[f] = functions(f, repo)
        name = "(outside)"
        for first, fn in cache[f]:
            if first <= line:
                name = fn
        out[(os.path.basename(f), name)] += v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case")
    ap.add_argument("baseline", nargs="?")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    a = ap.parse_args()
    inst, samples, stalls, text = load(a.case)
    cache = {}
    ti, ts = sum(inst.values()), sum(samples.values())
    print(f"{a.case}: {ti / 1e6:.1f}M instructions executed, {ts} warp samples")
    files = collections.Counter()
    for (f, _), v in inst.items():
        files[os.path.basename(f)] += v
    print("instructions by file:", ", ".join(f"{f} {100 * v / max(ti, 1):.1f}%" for f, v in files.most_common(8)))
    fi, fs = by_function(inst, a.repo, cache), by_function(samples, a.repo, cache)
    print("\nby function (instructions, samples):")
    for key, v in fs.most_common(a.top):
        print(f"  {key[0]}:{key[1]:28s} {fi[key] / 1e6:8.1f}M {v:8d}")
    print("\ntop lines by samples (main stall reasons):")
    for key, v in samples.most_common(a.top):
        main3 = " ".join(f"{r}={n}" for r, n in stalls[key].most_common(3) if n)
        print(f"  {v:7d} {inst[key] / 1e6:7.1f}M {os.path.basename(key[0])}:{key[1]} {text[key][:60]} | {main3}")
    if a.baseline:
        bi, bs, _, btext = load(a.baseline)
        print(f"\nagainst {a.baseline}: {(ti - sum(bi.values())) / 1e6:+.1f}M instructions, "
              f"{ts - sum(bs.values()):+d} samples")
        dfs = by_function(samples, a.repo, cache)
        dfs.subtract(by_function(bs, a.repo, cache))
        dfi = by_function(inst, a.repo, cache)
        dfi.subtract(by_function(bi, a.repo, cache))
        print("by function (instructions, samples):")
        for key, v in sorted(dfs.items(), key=lambda kv: -abs(kv[1]))[: a.top]:
            print(f"  {key[0]}:{key[1]:28s} {dfi[key] / 1e6:+8.1f}M {v:+8d}")
        print("by line (samples):")
        keys = set(samples) | set(bs)
        for key in sorted(keys, key=lambda k: -abs(samples.get(k, 0) - bs.get(k, 0)))[: a.top]:
            d = samples.get(key, 0) - bs.get(key, 0)
            t = text.get(key) or btext.get(key, "")
            print(f"  {d:+7d} ({bs.get(key, 0)} -> {samples.get(key, 0)}) {os.path.basename(key[0])}:{key[1]} {t[:60]}")


if __name__ == "__main__":
    main()
