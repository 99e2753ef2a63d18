#!/usr/bin/env python3
"""Sum an ncu --csv report of gpu__time_duration.sum per kernel.

Usage: ncu_sum.py REPORT.csv [--per NAME_PART]

Reads the CSV rows of `ncu --csv --metrics gpu__time_duration.sum` (other lines, e.g. the profiled program's own
output, are skipped), groups the launches by kernel name (template arguments dropped) and prints, per kernel:
launches, total time, mean time per launch and share of the total. With --per NAME_PART the totals are also given
per launch of the first kernel whose name contains NAME_PART (e.g. one per layer and token), so that two reports
with different launch windows compare per layer.
"""

import argparse
import csv
import re
import sys
from collections import defaultdict

UNIT_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9}


def short(name: str) -> str:
    # "void foo<...>(args)" -> "foo"
    name = re.sub(r"^void\s+", "", name.strip())
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            if depth == 0 and out:
                break
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip() or name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--per", default=None)
    args = ap.parse_args()
    rows = []
    header = None
    with open(args.report, newline="", errors="replace") as f:
        for rec in csv.reader(f):
            if header is None:
                if "Kernel Name" in rec and "Metric Value" in rec:
                    header = {k: i for i, k in enumerate(rec)}
                continue
            if len(rec) != len(header) or rec[header["Metric Name"]] != "gpu__time_duration.sum":
                continue
            unit = UNIT_NS.get(rec[header["Metric Unit"]])
            if unit is None:
                print(f"ncu_sum.py: unknown unit {rec[header['Metric Unit']]!r}", file=sys.stderr)
                return 1
            value = float(rec[header["Metric Value"]].replace(",", ""))
            rows.append((short(rec[header["Kernel Name"]]), value * unit))
    if not rows:
        print(f"ncu_sum.py: no gpu__time_duration.sum rows in {args.report}", file=sys.stderr)
        return 1
    by = defaultdict(lambda: [0, 0.0])
    for name, ns in rows:
        by[name][0] += 1
        by[name][1] += ns
    total = sum(t for _, t in by.values())
    per_n = None
    if args.per:
        hits = [n for n in by if args.per in n]
        if not hits:
            print(f"ncu_sum.py: no kernel name contains {args.per!r}", file=sys.stderr)
            return 1
        per_n = by[hits[0]][0]
    print(f"{len(rows)} launches, {total / 1e3:.1f} us in all" + (f", {per_n} launches of {args.per}" if per_n else ""))
    print(f"{'kernel':<48} {'launches':>8} {'total us':>10} {'mean us':>8} {'share':>6}" + ("  us per " + args.per if per_n else ""))
    for name, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        line = f"{name[:48]:<48} {n:>8} {t / 1e3:>10.1f} {t / n / 1e3:>8.2f} {100 * t / total:>5.1f}%"
        if per_n:
            line += f"  {t / per_n / 1e3:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
