#!/usr/bin/python3
"""Dynamic batching on and off, side by side: `attention-client load` against two servers
started from the same build, one with --batch-delay-us 0 (off) and one with batching on.

    /usr/bin/python3 bench/batching.py [--build build] [--rounds 3] [--duration 3]
        [--delay-us 500] [--max-size 32] [--rates 500,1000,2000,4000]

Models are random (scripts/export_model.py when torch is there, else attention-bench
--write-model): E=1024 H=16, E=512 H=8, E=256 H=4. Each closed-loop case runs in rounds,
off and on alternately (the order flips every round), so a machine shared with other work
moves both sides alike; the table gives each side's median and the median of the rounds'
on/off ratios. Every load verifies a share of its answers against the naive reference
(--verify). An open-loop sweep (--rate) then shows latency against offered load, off and on
alternately at each rate. Prints a Markdown table and the goals judged on the run's figures.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {"m1024": (1024, 16), "m512": (512, 8), "m256": (256, 4)}
# name, model, batch, seq, load flags
CASES = [
    ("32 callers (1, 1, 1024, 16)", "m1024", 1, 1, ["--concurrency", "32"]),
    ("1 caller (1, 1, 1024, 16)", "m1024", 1, 1, ["--concurrency", "1"]),
    ("8 streams x 4 in flight (1, 1, 1024, 16)", "m1024", 1, 1,
     ["--stream", "--concurrency", "8"]),
    ("32 callers (1, 32, 512, 8)", "m512", 1, 32, ["--concurrency", "32"]),
    ("1 caller (1, 32, 512, 8)", "m512", 1, 32, ["--concurrency", "1"]),
    ("32 callers (4, 16, 256, 4)", "m256", 4, 16, ["--concurrency", "32"]),
    ("1 caller (4, 16, 256, 4)", "m256", 4, 16, ["--concurrency", "1"]),
]


def make_models(build, tmp, models=None):
    """Random models {name: (E, H)} (default MODELS) in `tmp`: {name: path}."""
    paths = {}
    for name, (e, h) in (models or MODELS).items():
        path = os.path.join(tmp, name + ".safetensors")
        exported = subprocess.run(
            ["/usr/bin/python3", os.path.join(ROOT, "scripts/export_model.py"), "--embed-dim",
             str(e), "--num-heads", str(h), "--seed", "0", "--out", path],
            capture_output=True)
        if exported.returncode != 0:  # no torch: the bench tool writes one
            subprocess.run([os.path.join(build, "bench/attention-bench"), "--write-model", path,
                            "--embed", str(e), "--heads", str(h)], check=True,
                           capture_output=True)
        paths[name] = path
    return paths


class Server:
    def __init__(self, build, models, flags):
        args = [os.path.join(build, "server/attention-server"), "--listen", "127.0.0.1:0"]
        for name, path in models.items():
            args += ["--model", f"{name}={path}"]
        self.proc = subprocess.Popen(args + flags, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            m = re.search(r"listening on (\S+);", line)
            if m:
                self.target = m.group(1)
                return
        sys.exit("attention-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(build, target, model_path, model, batch, seq, flags, duration):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [os.path.join(build, "client/attention-client"), "--target", target, "load",
             "--model", model, "--model-file", model_path, "--batch", str(batch), "--seq",
             str(seq), "--duration", str(duration), "--warmup", "1", "--verify", "5",
             "--quiet", "--json", out.name] + flags,
            check=True, capture_output=True)
        report = json.load(open(out.name))
        return report[0] if isinstance(report, list) else report  # one level


def errors(row):
    return sum(row["errors"].values()) + row["lost"] + row["verify"]["mismatches"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--delay-us", type=int, default=500)
    p.add_argument("--max-size", type=int, default=32)
    p.add_argument("--rates", default="500,1000,2000,4000")
    p.add_argument("--sweep-only", action="store_true", help="only the open-loop sweep")
    a = p.parse_args()

    tmp = tempfile.mkdtemp()
    servers = []
    try:
        models = make_models(a.build, tmp)
        off = Server(a.build, models, ["--batch-delay-us", "0"])
        servers.append(off)
        on = Server(a.build, models, ["--batch-delay-us", str(a.delay_us), "--batch-max-size",
                                      str(a.max_size)])
        servers.append(on)
        sides = {"off": off, "on": on}
        print(f"# batching off vs on (--batch-delay-us {a.delay_us} --batch-max-size "
              f"{a.max_size}), {a.rounds} rounds of {a.duration:g} s, alternating")
        results = {}  # case -> side -> [row per round]
        checked = bad = 0
        for r in range(0 if a.sweep_only else a.rounds):
            for name, model, batch, seq, flags in CASES:
                order = ["off", "on"] if (r % 2 == 0) else ["on", "off"]
                for side in order:
                    row = load(a.build, sides[side].target, models[model], model, batch, seq,
                               flags, a.duration)
                    results.setdefault(name, {}).setdefault(side, []).append(row)
                    checked += row["verify"]["checked"]
                    bad += errors(row)
            print(f"round {r + 1} done", file=sys.stderr)

        print("\n| case | off req/s | on req/s | throughput on/off | off p50 ms | on p50 ms "
              "| p50 on/off | on p99 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        verdict = {}
        for name, *_ in ([] if a.sweep_only else CASES):
            off_rows, on_rows = results[name]["off"], results[name]["on"]
            med = lambda rows, f: statistics.median(f(x) for x in rows)
            rps_ratio = statistics.median(n["rps"] / f["rps"] for f, n in zip(off_rows, on_rows))
            p50_ratio = statistics.median(
                n["latency_ms"]["p50"] / f["latency_ms"]["p50"] for f, n in zip(off_rows, on_rows))
            off_p50 = med(off_rows, lambda x: x["latency_ms"]["p50"])
            on_p50 = med(on_rows, lambda x: x["latency_ms"]["p50"])
            verdict[name] = (rps_ratio, off_p50, on_p50)
            print(f"| {name} | {med(off_rows, lambda x: x['rps']):.0f} | "
                  f"{med(on_rows, lambda x: x['rps']):.0f} | {rps_ratio:.2f}x | {off_p50:.3f} | "
                  f"{on_p50:.3f} | {p50_ratio:.2f} | "
                  f"{med(on_rows, lambda x: x['latency_ms']['p99']):.3f} |")

        rates = a.rates.split(",")
        print(f"\nOpen loop (1, 1, 1024, 16), {a.duration:g} s a rate, off and on alternately:\n")
        print("| offered req/s | off answered/s | off refused | off p50 ms | off p99 ms "
              "| on answered/s | on refused | on p50 ms | on p99 ms |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rate in rates:
            rows = {}
            for side in ("off", "on"):
                rows[side] = load(a.build, sides[side].target, models["m1024"], "m1024", 1, 1,
                                  ["--rate", rate, "--max-outstanding", "256"], a.duration)
                checked += rows[side]["verify"]["checked"]
                bad += rows[side]["verify"]["mismatches"] + rows[side]["lost"]
            print(f"| {rate} | " + " | ".join(
                f"{rows[s]['ok'] / rows[s]['duration_s']:.0f} | {sum(rows[s]['errors'].values())} | "
                f"{rows[s]['latency_ms']['p50']:.3f} | {rows[s]['latency_ms']['p99']:.3f}"
                for s in ("off", "on")) + " |")

        print(f"\nverified answers: {checked}, mismatches, errors or lost: {bad}")
        if a.sweep_only:
            return
        crowd = verdict["32 callers (1, 1, 1024, 16)"]
        lone = verdict["1 caller (1, 1, 1024, 16)"]
        print(f"goal 32 callers >= 2.5x: {crowd[0]:.2f}x -> "
              f"{'met' if crowd[0] >= 2.5 else 'NOT met'}")
        bound = 1.1 * lone[1] + 0.05
        print(f"goal lone caller p50 <= 1.1 x off + 0.05 ms: {lone[2]:.3f} ms vs {bound:.3f} ms "
              f"-> {'met' if lone[2] <= bound else 'NOT met'}")
        print(f"goal every verified answer exact: {'met' if bad == 0 else 'NOT met'}")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
