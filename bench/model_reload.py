#!/usr/bin/python3
"""A model reloading beside live traffic (--model-dir): the p99 latency of calls to another
model while a model of E = 1024 (16 MiB) is replaced again and again, against the same load
with no reload, in rounds alternating which goes first; and the server's resident memory
during the reloads against before them.

    /usr/bin/python3 bench/model_reload.py [--build build] [--rounds 3] [--duration 6]

The load: `attention-client load --model small` (demo's weights, E = 64, (1, 16, 64, 4)),
closed loop, one caller. The reloads: the big model's file replaced by a rename with one of
two weight sets, then SIGHUP, every --interval seconds (default 2). Goals: p99 within 1.5x; peak RSS no
more than the RSS before the reloads (old model loaded) plus one new version (LoadedBytes:
twice the file) plus the budget's bytes in use.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batching import ROOT, make_models  # noqa: E402


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sample(admin, series):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " ") or line.startswith(series + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def load(build, target, duration):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [os.path.join(build, "client/attention-client"), "--target", target, "load",
             "--model", "small", "--batch", "1", "--seq", "16", "--concurrency", "1",
             "--duration", str(duration), "--warmup", "0.5", "--quiet", "--json", out.name],
            check=True, capture_output=True)
        row = json.load(open(out.name))
    if sum(row["errors"].values()) or row["lost"]:
        sys.exit(f"failed calls: {row['first_errors']}")
    return row["latency_ms"]["p99"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6)
    p.add_argument("--interval", type=float, default=2)
    a = p.parse_args()
    tmp = tempfile.mkdtemp()
    models = make_models(a.build, tmp, {"big1": (1024, 16)})
    big2 = os.path.join(tmp, "big2.safetensors")
    subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts/export_model.py"),
                    "--embed-dim", "1024", "--num-heads", "16", "--seed", "1", "--out", big2],
                   capture_output=True)
    if not os.path.exists(big2):
        shutil.copy(models["big1"], big2)
    versions = [models["big1"], big2]
    served = os.path.join(tmp, "served")
    os.mkdir(served)
    shutil.copy(versions[0], os.path.join(served, "big.safetensors"))
    shutil.copy(os.path.join(ROOT, "models/demo.safetensors"),
                os.path.join(served, "small.safetensors"))
    server = subprocess.Popen(
        [os.path.join(a.build, "server/attention-server"), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--model-dir", served, "--model-poll-seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = admin = None
    for line in server.stdout:
        if "admin endpoint on http://" in line:
            admin = line.split("http://")[1].split()[0]
        if "listening on" in line:
            target = line.split("listening on ")[1].split(";")[0]
            break
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    file_bytes = os.path.getsize(versions[0])
    try:
        quiet, busy, peaks, before = [], [], [], []
        for r in range(a.rounds):
            for side in (["quiet", "reload"] if r % 2 == 0 else ["reload", "quiet"]):
                if side == "quiet":
                    quiet.append(load(a.build, target, a.duration))
                    continue
                stop = threading.Event()
                peak = [0]
                base = rss_bytes(server.pid)
                used = sample(admin, "attention_memory_budget_used_bytes")

                def reload():
                    i = 0
                    while not stop.is_set():
                        i += 1
                        shutil.copy(versions[i % 2], os.path.join(served, ".big.new"))
                        os.rename(os.path.join(served, ".big.new"),
                                  os.path.join(served, "big.safetensors"))
                        server.send_signal(signal.SIGHUP)
                        stop.wait(a.interval)

                def watch():
                    while not stop.is_set():
                        peak[0] = max(peak[0], rss_bytes(server.pid))
                        time.sleep(0.005)

                threads = [threading.Thread(target=reload), threading.Thread(target=watch)]
                for t in threads:
                    t.start()
                busy.append(load(a.build, target, a.duration))
                stop.set()
                for t in threads:
                    t.join()
                peaks.append(peak[0] - base)
                before.append((base, used))
            print(f"round {r + 1} done", file=sys.stderr, flush=True)
        loads = sample(admin, 'attention_model_loads_total{model="big",result="loaded"}')
        ratio = statistics.median(b / q for q, b in zip(quiet, busy))
        print(f"| p99 of calls to the small model | ms |\n| --- | ---: |")
        print(f"| no reload | {statistics.median(quiet):.3f} |")
        print(f"| the big model (E 1024, {file_bytes >> 20} MiB file) replaced every "
              f"{a.interval:g} s ({loads:.0f} loads in all) | {statistics.median(busy):.3f} |")
        print(f"| ratio (median of the rounds') | {ratio:.2f}x (goal <= 1.5x) |")
        bound = 2 * file_bytes + max(u for _, u in before)
        print(f"\npeak RSS during the reloads minus RSS before them: "
              f"{max(peaks) / 2**20:.1f} MiB (rounds: "
              f"{', '.join(f'{x / 2**20:.1f}' for x in peaks)}); one new version loaded "
              f"(2 x the file) + the budget in use: {bound / 2**20:.1f} MiB: "
              f"{'within' if max(peaks) <= bound else 'OVER'}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
