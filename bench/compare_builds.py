#!/usr/bin/env python3
"""Times two builds of attention-bench on the PyTorch comparison's suite, in alternating rounds,
so that a change that should not move speed (a refactoring) can show it does not.

    /usr/bin/python3 bench/compare_builds.py --base OTHER_BUILD [--build build] [--rounds 3]
                                             [--min-time 1] [--only SUBSTRING]

OTHER_BUILD is a build directory of another checkout (e.g. `git worktree add ../base REV` and
`BUILD_DIR=../base/build ../base/scripts/build.sh attention-bench`). Each case runs base then
this build, --rounds times, each --min-time seconds; the table gives both medians and the median
of the rounds' ratios (this build's time / base's, with their range): 1.00 is unchanged.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_torch import ROOT, SUITE, bench_args, median, ours  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the other build directory")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    print("| case | weights | base ms | this ms | this / base (range) |")
    print("| --- | --- | --- | --- | --- |")
    all_ratios = []
    for c in SUITE:
        name, B, L, S, E, H, Hkv = c[:7]
        label = f"{name} ({B}, {L}, {E}, {H})" + (f" kv {Hkv}" if Hkv != H else "")
        if a.only not in label:
            continue
        for weights in c[-1]:
            args = bench_args(c, weights)
            base_ms, this_ms, ratios = [], [], []
            for _ in range(a.rounds):
                b = ours(a.base, args, a.threads, a.min_time)[0]["ms_median"]
                t = ours(a.build, args, a.threads, a.min_time)[0]["ms_median"]
                base_ms.append(b)
                this_ms.append(t)
                ratios.append(t / b)
            all_ratios.append(median(ratios))
            print(f"| {label} | {weights} | {median(base_ms):.3f} | {median(this_ms):.3f} | "
                  f"{median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |", flush=True)
    if all_ratios:
        print(f"\nmedian over the cases: {median(all_ratios):.3f}; "
              f"range {min(all_ratios):.3f}-{max(all_ratios):.3f}")


if __name__ == "__main__":
    main()
