#!/usr/bin/python3
"""Decoding at scale, the figures of batched decode steps, each a ratio of two things run
in the same rounds (alternating, the order flipping every round, so that a machine shared
with other work moves both alike):

 1. --sequences sequences of a random model (E=1024, H=16) at --context keys, one token a
    step (`attention-client load --rpc decode`): aggregate steps per second against a
    server with --batch-delay-us (batching on) and one without (off); and a lone
    sequence's step latency on both.
 2. One sequence at --long-context keys: the load tool's step latency against the CLI's
    own decode (`attention-client decode`) on the same server.
 3. The Python Decoder's step (client/python) against the CLI's at --long-context.

    /usr/bin/python3 bench/decode_batching.py [--build build] [--rounds 3] [--steps 200]
        [--sequences 32] [--context 512] [--long-context 4096] [--delay-us 2000]

Correctness is the tests' (batched steps equal unbatched ones bit for bit); this prints
figures only (medians over the rounds, and the median of the rounds' ratios).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batching import ROOT, Server, make_models  # noqa: E402


def load(build, target, context, sequences, steps):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [os.path.join(build, "client/attention-client"), "--target", target, "load",
             "--rpc", "decode", "--model", "m", "--context", str(context), "--sequences",
             str(sequences), "--steps", str(steps), "--quiet", "--json", out.name],
            check=True, capture_output=True)
        row = json.load(open(out.name))
    bad = sum(row["errors"].values()) + row["lost"]
    if bad:
        sys.exit(f"decode load: {bad} failed steps: {row['first_errors']}")
    return row


def cli_decode(build, target, npy, prefill):
    """The CLI's own decode: its step p50 (ms)."""
    out = subprocess.run(
        [os.path.join(build, "client/attention-client"), "--target", target, "decode",
         "--input", npy, "--model", "m", "--prefill", str(prefill)],
        check=True, capture_output=True, text=True).stdout
    return float(re.search(r"steps: p50 ([0-9.]+) ms", out).group(1))


def python_decode(target, x, prefill):
    """The Python Decoder's step p50 (ms), prefill then one token a step."""
    sys.path.insert(0, os.path.join(ROOT, "client/python"))
    from attention_client import Client

    with Client(target) as client, client.decoder(model="m") as d:
        d.append("py", input=x[:prefill])
        ms = []
        for t in range(prefill, len(x)):
            start = time.perf_counter()
            d.append("py", input=x[t:t + 1])
            ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(ms)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--sequences", type=int, default=32)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--long-context", type=int, default=4096)
    p.add_argument("--delay-us", type=int, default=2000)
    a = p.parse_args()

    tmp = tempfile.mkdtemp()
    servers = []
    try:
        models = make_models(a.build, tmp, {"m": (1024, 16)})
        off = Server(a.build, models, ["--batch-delay-us", "0"])
        servers.append(off)
        on = Server(a.build, models, ["--batch-delay-us", str(a.delay_us)])
        servers.append(on)
        sides = {"off": off, "on": on}
        npy = os.path.join(tmp, "x.npy")
        x = np.random.RandomState(0).randn(a.long_context + a.steps, 1024).astype(np.float32)
        np.save(npy, x)
        many, lone, tool = {"off": [], "on": []}, {"off": [], "on": []}, []
        print(f"# decode batching: E=1024 H=16, --batch-delay-us {a.delay_us} (on) vs 0 (off), "
              f"{a.rounds} rounds, {a.steps} steps per sequence", flush=True)
        for r in range(a.rounds):
            for side in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
                t = sides[side].target
                many[side].append(load(a.build, t, a.context, a.sequences, a.steps)["rps"])
                lone[side].append(
                    load(a.build, t, a.context, 1, a.steps)["latency_ms"]["p50"])
            order = ["load", "cli", "python"] if r % 2 == 0 else ["python", "cli", "load"]
            got = {}
            for kind in order:
                if kind == "load":
                    got[kind] = load(a.build, off.target, a.long_context, 1,
                                     a.steps)["latency_ms"]["p50"]
                elif kind == "cli":
                    got[kind] = cli_decode(a.build, off.target, npy, a.long_context)
                else:
                    got[kind] = python_decode(off.target, x, a.long_context)
            tool.append(got)
            print(f"round {r + 1} done", file=sys.stderr, flush=True)
        med = statistics.median
        ratio = med(n / f for f, n in zip(many["off"], many["on"]))
        lone_ratio = med(n / f for f, n in zip(lone["off"], lone["on"]))
        print(f"\n| figure | off | on | on/off |\n| --- | ---: | ---: | ---: |")
        print(f"| {a.sequences} sequences at context {a.context}: steps/s | "
              f"{med(many['off']):.0f} | {med(many['on']):.0f} | {ratio:.2f}x |")
        print(f"| 1 sequence at context {a.context}: step p50 ms | {med(lone['off']):.3f} | "
              f"{med(lone['on']):.3f} | {lone_ratio:.2f}x |")
        load_ms, cli_ms = med(t["load"] for t in tool), med(t["cli"] for t in tool)
        py_ms = med(t["python"] for t in tool)
        print(f"\n| 1 sequence at context {a.long_context}, no batching: step p50 | ms | "
              f"/ CLI |\n| --- | ---: | ---: |")
        print(f"| attention-client decode (C++ client) | {cli_ms:.3f} | 1.00 |")
        print(f"| attention-client load --rpc decode | {load_ms:.3f} | "
              f"{med(t['load'] / t['cli'] for t in tool):.2f} |")
        print(f"| Python Decoder | {py_ms:.3f} | {med(t['python'] / t['cli'] for t in tool):.2f} "
              f"(+{med(t['python'] - t['cli'] for t in tool):.3f} ms) |")
        print(f"\ngoals: batching >= 3x: {'met' if ratio >= 3 else 'NOT met'} ({ratio:.2f}x); "
              f"a lone sequence within 1.1x (+0.05 ms): "
              f"{'met' if med(lone['on']) <= 1.1 * med(lone['off']) + 0.05 else 'NOT met'}")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
