#!/usr/bin/env python3
"""PyTorch's decode step against ours, in one run (figures, not a test).

PyTorch's step on a key/value cache, as a generation loop runs it: one query per head
over S cached keys, q @ K^T * scale, softmax, @ V (float32, and bfloat16 when asked), on
the same threads. Ours: build/bench/decode-bench in process on the same shape (its step
appends the token into the sequence's blocks and reads them once). Prints each side's
median and the ratio; the two are timed in turns, block after block, so that a noisy
machine moves both alike.

    /usr/bin/python3 bench/decode_torch.py [--context 4096,16384] [--embed 1024]
        [--heads 16] [--kv-heads 16] [--threads 2] [--turns 5]

Needs Debian's python3-torch (scripts/install-deps.sh --torch) and a built decode-bench.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_step_ms(context, embed, heads, kv_heads, dtype, seconds=0.5):
    d = embed // heads
    q = torch.randn(1, heads, 1, d, dtype=dtype)
    k = torch.randn(1, kv_heads, context, d, dtype=dtype)
    v = torch.randn(1, kv_heads, context, d, dtype=dtype)
    if kv_heads != heads:  # a grouped-query cache is expanded for the product
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scale = d ** -0.5

    def step():
        w = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
        return w @ v

    with torch.inference_mode():
        for _ in range(3):
            step()
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ours_ms(context, embed, heads, kv_heads, threads, bf16):
    out = subprocess.run(
        [os.path.join(ROOT, "build/bench/decode-bench"), "--context", str(context), "--embed",
         str(embed), "--heads", str(heads), "--kv-heads", str(kv_heads), "--threads",
         str(threads), "--min-time", "0.5"],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"step f32 ([0-9.]+) ms.*\| bf16 ([0-9.]+) ms", out)
    if not m:
        sys.exit("decode_torch.py: unexpected decode-bench output:\n" + out)
    return float(m.group(2 if bf16 else 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", default="4096,16384")
    p.add_argument("--embed", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--bfloat16", action="store_true", help="both sides in bfloat16")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    kv = a.kv_heads or a.heads
    dtype = torch.bfloat16 if a.bfloat16 else torch.float32
    print(f"PyTorch {torch.__version__}, {a.threads} threads, E {a.embed} H {a.heads} Hkv {kv}, "
          f"{'bfloat16' if a.bfloat16 else 'float32'}")
    for context in (int(c) for c in a.context.split(",")):
        ratios, theirs, ours = [], [], []
        for _ in range(a.turns):
            t = torch_step_ms(context, a.embed, a.heads, kv, dtype)
            o = ours_ms(context, a.embed, a.heads, kv, a.threads, a.bfloat16)
            theirs.append(t)
            ours.append(o)
            ratios.append(t / o)
        print(f"context {context:6d}: PyTorch step {statistics.median(theirs):.3f} ms, ours "
              f"{statistics.median(ours):.3f} ms: {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f} over {a.turns} turns)")


if __name__ == "__main__":
    main()
