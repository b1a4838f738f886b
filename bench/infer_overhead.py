#!/usr/bin/python3
"""The Open Inference Protocol's overhead: the same self-attention work through
`ModelInfer` (inference.GRPCInferenceService) and through attention.v1's `SelfAttention`,
`attention-client load --rpc model-infer` against `--rpc self-attention`, one caller (closed
loop), on one server, in rounds alternating which goes first.

    /usr/bin/python3 bench/infer_overhead.py [--build build] [--rounds 5] [--duration 3]

Cases (B, L, E, H): (8, 128, 512, 8) with a random model of E = 512 (goal: overhead <= 5%),
and (1, 16, 64, 4) with the demo model (goal: <= 0.05 ms). Prints each side's mean latency
(medians over the rounds) and the median of the rounds' differences and ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batching import ROOT, Server, make_models  # noqa: E402

CASES = [("(8, 128, 512, 8)", "m512", 8, 128), ("(1, 16, 64, 4)", "demo", 1, 16)]


def load(build, target, rpc, model, batch, seq, duration):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [os.path.join(build, "client/attention-client"), "--target", target, "load", "--rpc",
             rpc, "--model", model, "--batch", str(batch), "--seq", str(seq), "--concurrency",
             "1", "--duration", str(duration), "--warmup", "0.5", "--quiet", "--json", out.name],
            check=True, capture_output=True)
        row = json.load(open(out.name))
    if sum(row["errors"].values()) or row["lost"]:
        sys.exit(f"{rpc}: failed calls: {row['first_errors']}")
    return row["latency_ms"]["mean"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3)
    a = p.parse_args()
    tmp = tempfile.mkdtemp()
    models = make_models(a.build, tmp, {"m512": (512, 8)})
    models["demo"] = os.path.join(ROOT, "models/demo.safetensors")
    server = Server(a.build, models, [])
    try:
        rows = {name: {"v1": [], "oip": []} for name, *_ in CASES}
        for r in range(a.rounds):
            for name, model, batch, seq in CASES:
                order = ["v1", "oip"] if r % 2 == 0 else ["oip", "v1"]
                for side in order:
                    rpc = "self-attention" if side == "v1" else "model-infer"
                    rows[name][side].append(
                        load(a.build, server.target, rpc, model, batch, seq, a.duration))
            print(f"round {r + 1} done", file=sys.stderr, flush=True)
        print("| case (B, L, E, H) | SelfAttention ms | ModelInfer ms | difference ms | ratio |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, *_ in CASES:
            v1, oip = rows[name]["v1"], rows[name]["oip"]
            diff = statistics.median(o - v for v, o in zip(v1, oip))
            ratio = statistics.median(o / v for v, o in zip(v1, oip))
            print(f"| {name} | {statistics.median(v1):.3f} | {statistics.median(oip):.3f} | "
                  f"{diff:+.3f} | {ratio:.3f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
