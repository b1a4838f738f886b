#!/usr/bin/env python3
"""Runs the benchmark suite in PyTorch and in attention-bench, in one run, and prints the table
side by side with the speedup (markdown, for bench/README.md).

    /usr/bin/python3 bench/compare_torch.py [--build build] [--threads 2] [--min-time 2]
                                            [--rounds 3] [--only SUBSTRING] [--skip-torch]
                                            [--precision bfloat16]

Needs python3-torch and libopenblas0-pthread (scripts/install-deps.sh --torch) and a built
tree (scripts/build.sh). PyTorch runs nn.MultiheadAttention(batch_first=True) in eval mode
under inference_mode with need_weights matched; cases without projections run the same math by
hand (1.13 has no public scaled_dot_product_attention). Both sides get the same thread count
(torch.set_num_threads plus OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, set before torch loads).
Each case runs in rounds, ours then PyTorch, --min-time each: the table gives the median time of
each side and the median of the rounds' speedups (with their range), so a machine that drifts
between the two windows moves one round, not the figure. Through a server it starts: the
end-to-end overhead at (8, 128, 512, 8), and attention-client load with 8 clients against one
(--only server, --only clients). The run ends with the performance goals judged on its own
figures (met / NOT met, with the figure that decided).

With --precision bfloat16 it runs the bfloat16 section instead: on every suite case, our
bfloat16 precision against PyTorch's bfloat16 module (the module and its inputs cast with
.to(torch.bfloat16); cases without projections: the same math on bfloat16 tensors) and against
our own float32, in rounds (ours bf16, ours f32, PyTorch bf16), and the bfloat16 roofline
(oneDNN's bfloat16 matmul of the dominant GEMM's size, timed in turns with the case).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, B, L, S, E, H, Hkv, self, projection, causal, weights modes)
SUITE = [
    ("mha", 1, 128, 128, 512, 8, 8, True, True, False, ("none", "average")),
    ("mha", 8, 128, 128, 512, 8, 8, True, True, False, ("none", "average")),
    ("mha", 4, 512, 512, 512, 8, 8, True, True, False, ("none", "average")),
    ("mha", 1, 2048, 2048, 512, 8, 8, True, True, False, ("none", "average")),
    ("mha", 32, 64, 64, 256, 4, 4, True, True, False, ("none", "average")),
    ("mha causal", 1, 4096, 4096, 1024, 16, 16, True, True, True, ("none",)),
    ("gqa sdpa", 1, 2048, 2048, 1024, 16, 4, False, False, False, ("none",)),
]


def reexec_with_threads(threads):
    """BLAS and OpenMP read their thread counts when torch loads: set them first."""
    want = str(threads)
    if os.environ.get("OMP_NUM_THREADS") == want and os.environ.get("OPENBLAS_NUM_THREADS") == want:
        return
    env = dict(os.environ, OMP_NUM_THREADS=want, OPENBLAS_NUM_THREADS=want)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def timed(fn, min_time):
    for _ in range(2):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def torch_case(torch, c, weights, min_time, dtype=None):
    """PyTorch's time for suite case `c`; dtype torch.bfloat16: the module and the inputs cast
    to it (what a PyTorch user runs for bfloat16 inference)."""
    name, B, L, S, E, H, Hkv, self_attn, projection, causal, _ = c
    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    if projection:
        mha = torch.nn.MultiheadAttention(E, H, batch_first=True).eval().to(dtype)
        x = torch.randn(B, L, E, generator=g).to(dtype)
        kv = x if self_attn else torch.randn(B, S, E, generator=g).to(dtype)
        mask = None
        if causal:
            mask = torch.triu(torch.full((L, S), float("-inf")), diagonal=1).to(dtype)

        def run():
            with torch.inference_mode():
                mha(x, kv, kv, need_weights=weights != "none", attn_mask=mask,
                    average_attn_weights=True)
    else:
        D = E // H
        q = torch.randn(B, H, L, D, generator=g).to(dtype)
        k = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
        v = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
        scale = D ** -0.5

        def run():
            with torch.inference_mode():
                kk = k.repeat_interleave(H // Hkv, dim=1)
                vv = v.repeat_interleave(H // Hkv, dim=1)
                p = torch.softmax(torch.matmul(q, kk.transpose(-1, -2)) * scale, dim=-1)
                torch.matmul(p, vv)
    return timed(run, min_time)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def bench_args(c, weights):
    name, B, L, S, E, H, Hkv, self_attn, projection, causal, _ = c
    args = ["--batch", str(B), "--seq", str(L), "--kv-seq", str(S), "--embed", str(E),
            "--heads", str(H), "--kv-heads", str(Hkv), "--weights", weights]
    if self_attn:
        args.append("--self")
    if projection:
        args.append("--projection")
    if causal:
        args.append("--causal")
    return args


def ours(build, args, threads, min_time, extra=()):
    cmd = [os.path.join(build, "bench", "attention-bench"), *args, "--threads", str(threads),
           "--min-time", str(min_time), "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# Cases dominated by the projections (the roofline goal): attention is a small part of their work.
PROJECTION_DOMINATED = {(1, 128, 512, 8), (8, 128, 512, 8), (32, 64, 256, 4)}


class Goals:
    """The performance issue's goals, judged on this run's figures (None: not run)."""

    def __init__(self):
        self.speedups = []   # (median speedup, case)
        self.rooflines = []  # (ratio to sgemm, case)
        self.long_rss_mb = None
        self.causal_ratio = None
        self.threads_ratio = None
        self.server = None   # (in turns, typed, pre-encoded, 2 in flight)
        self.clients = []    # (8 clients' throughput / one client's, case)

    def report(self):
        def line(goal, ok, figures):
            verdict = "not run" if ok is None else ("met" if ok else "NOT met")
            print(f"- {goal}: {verdict}{' (' + figures + ')' if figures else ''}")

        def lowest(goal, figures, at_least, percent):
            """A goal every case must meet, judged by the lowest of `figures` ((figure, case))."""
            if not figures:
                return line(goal, None, "")
            low, case = min(figures)
            shown = f"{100 * low:.0f}%" if percent else f"{low:.2f}x"
            line(goal, low >= at_least, f"lowest {shown}, {case}")

        print("\ngoals in this run:")
        lowest(">= 2x PyTorch in every case", self.speedups, 2, False)
        lowest("projection-dominated cases >= 75% of the roofline", self.rooflines, 0.75, True)
        rss = self.long_rss_mb
        line("32768 tokens without weights under 1 GiB peak RSS", None if rss is None else rss < 1024,
             "" if rss is None else f"{rss:.0f} MB")
        c = self.causal_ratio
        line("causal close to half the time of non-causal (<= 0.6)", None if c is None else c <= 0.6,
             "" if c is None else f"{c:.2f}")
        t = self.threads_ratio
        line("2 threads never slower than 1 at (1, 128, 512, 8)", None if t is None else t <= 1.0,
             "" if t is None else f"{t:.2f} of one thread's time")
        if self.server:
            turns, typed, raw, two = self.server
            line("server end to end >= 90% of in-process at (8, 128, 512, 8)", turns >= 0.9,
                 f"in turns one call at a time {100 * turns:.0f}%; typed client {100 * typed:.0f}%, "
                 f"pre-encoded {100 * raw:.0f}%, two in flight {100 * two:.0f}%")
        else:
            line("server end to end >= 90% of in-process at (8, 128, 512, 8)", None, "")
        lowest("8 concurrent clients within 15% of one client's throughput", self.clients, 0.85, True)


def server_overhead(opts, port, goals):
    """(8, 128, 512, 8) self-attention with a model: attention-bench in-process and through the
    server (typed client, pre-encoded, in turns one call at a time and two in flight)."""
    rows = ours(opts.build, ["--batch", "8", "--seq", "128", "--embed", "512", "--heads", "8",
                             "--self", "--projection"], opts.threads, opts.min_time,
                ["--target", f"127.0.0.1:{port}", "--model", "m512"])
    by_mode = {r["mode"]: r for r in rows}
    local, remote, raw = by_mode["in-process"], by_mode["end-to-end"], by_mode["end-to-end-pre-encoded"]
    one, two = by_mode["end-to-end-in-turns"], by_mode["end-to-end-2-in-flight"]
    goals.server = (one["ratio_median"], local["ms_median"] / remote["ms_median"],
                    local["ms_median"] / raw["ms_median"], two["ratio_median"])
    print(f"\nserver overhead at (8, 128, 512, 8) self-attention with a model: in-process "
          f"{local['ms_median']:.2f} ms, end to end over loopback {remote['ms_median']:.2f} ms "
          f"with the typed client, {raw['ms_median']:.2f} ms with the request encoded once and "
          f"the response not parsed: end-to-end throughput = "
          f"{100 * local['ms_median'] / remote['ms_median']:.0f}% and "
          f"{100 * local['ms_median'] / raw['ms_median']:.0f}% of in-process.\n"
          f"In turns with in-process calls (pre-encoded): one call at a time "
          f"{100 * one['ratio_median']:.0f}% ({100 * one['ratio_min']:.0f}-"
          f"{100 * one['ratio_max']:.0f}% over {one['turns']} turns), two calls in flight "
          f"{100 * two['ratio_median']:.0f}% ({100 * two['ratio_min']:.0f}-"
          f"{100 * two['ratio_max']:.0f}% over {two['turns']} turns) of in-process throughput")


def eight_clients(build, port, duration, rounds):
    """Closed-loop throughput through the server with 8 clients against 1 (attention-client load,
    its two levels back to back in each round): the median of the rounds' ratios per case."""
    rows = []
    for B in (1, 8):
        ratios = []
        for _ in range(max(1, rounds)):
            with tempfile.TemporaryDirectory() as tmp:
                report = os.path.join(tmp, "load.json")
                subprocess.run([os.path.join(build, "client", "attention-client"), "--target",
                                f"127.0.0.1:{port}", "load", "--model", "m512", "--batch", str(B),
                                "--seq", "128", "--concurrency", "1,8", "--duration", str(duration),
                                "--json", report, "--quiet"], check=True, capture_output=True)
                with open(report) as f:
                    levels = {int(level["concurrency"]): level for level in json.load(f)}
            if any(level["errors"] or level["lost"] for level in levels.values()):
                sys.exit(f"eight_clients: the load at batch {B} had errors: {levels}")
            ratios.append((levels[8]["rps"] / levels[1]["rps"], levels[1]["rps"], levels[8]["rps"]))
        ratios.sort()
        ratio, one, eight = ratios[len(ratios) // 2]
        print(f"8 clients at ({B}, 128, 512, 8): {eight:.1f} req/s against {one:.1f} with one client "
              f"= {100 * ratio:.0f}% ({100 * ratios[0][0]:.0f}-{100 * ratios[-1][0]:.0f}% over "
              f"{len(ratios)} rounds)")
        rows.append((ratio, f"({B}, 128, 512, 8)"))
    return rows


def suite_cases(opts):
    """(case, weights mode, label) of the suite that --only selects."""
    for c in SUITE:
        name, B, L, S, E, H, Hkv = c[:7]
        for weights in c[10]:
            label = f"{name} ({B}, {L}, {E}, {H}{', Hkv=' + str(Hkv) if Hkv != H else ''})"
            if not opts.only or opts.only in label:
                yield c, weights, label


class Bfloat16Goals:
    """The bfloat16 issue's goals, judged on this run's figures."""

    def __init__(self):
        self.vs_torch = []  # (median speedup over PyTorch bf16, case, (B, L, E, H))
        self.rooflines = []  # (ratio to the bf16 matmul, case): projection-dominated cases
        self.vs_f32 = []  # (median speedup over our float32, case): projection-dominated cases

    def report(self):
        def lowest(goal, figures, at_least, percent=False):
            if not figures:
                return print(f"- {goal}: not run")
            low, case = min(figures)[:2]
            shown = f"{100 * low:.0f}%" if percent else f"{low:.2f}x"
            print(f"- {goal}: {'met' if low >= at_least else 'NOT met'} (lowest {shown}, {case})")

        print("\nbfloat16 goals in this run:")
        big = {(8, 128, 512, 8), (1, 2048, 512, 8)}
        lowest(">= 1.3x PyTorch bf16 at (8, 128, 512, 8) and (1, 2048, 512, 8)",
               [f for f in self.vs_torch if f[2] in big], 1.3)
        lowest(">= 1.1x PyTorch bf16 on the other cases",
               [f for f in self.vs_torch if f[2] not in big], 1.1)
        lowest("projection-dominated cases >= 80% of the bf16 matmul roofline", self.rooflines,
               0.8, True)
        lowest("projection-dominated cases >= 1.6x our float32", self.vs_f32, 1.6)


def bfloat16_section(opts, torch):
    goals = Bfloat16Goals()
    print("| case (B, L, E, H) | weights | PyTorch bf16 ms | ours bf16 ms | vs PyTorch bf16 (range) "
          "| ours f32 ms | bf16 vs our f32 (range) | ours bf16 GFLOP/s | bf16 roofline |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    bf16 = ["--precision", "bfloat16"]
    for c, weights, label in suite_cases(opts):
        B, L, E, H = c[1], c[2], c[4], c[5]
        args = bench_args(c, weights)
        row = ours(opts.build, args + bf16, opts.threads, opts.min_time, ["--roofline"])[0]
        if row["precision"] != "bfloat16":
            sys.exit("attention-bench ran float32: this CPU has no bfloat16 instructions")
        ms, f32_ms, torch_ms = [], [], []
        for _ in range(max(1, opts.rounds)):
            ms.append(ours(opts.build, args + bf16, opts.threads, opts.min_time)[0]["ms_median"])
            f32_ms.append(ours(opts.build, args, opts.threads, opts.min_time)[0]["ms_median"])
            torch_ms.append(torch_case(torch, c, weights, opts.min_time, torch.bfloat16))
        vs_torch = sorted(t / m for t, m in zip(torch_ms, ms))
        vs_f32 = sorted(f / m for f, m in zip(f32_ms, ms))
        case = f"{label} {weights}"
        goals.vs_torch.append((median(vs_torch), case, (B, L, E, H)))
        if (B, L, E, H) in PROJECTION_DOMINATED:
            goals.rooflines.append((row["roofline_ratio"], case))
            goals.vs_f32.append((median(vs_f32), case))
        print(f"| {label} | {weights} | {median(torch_ms):.2f} | {median(ms):.2f} | "
              f"{median(vs_torch):.2f}x ({vs_torch[0]:.2f}-{vs_torch[-1]:.2f}) | "
              f"{median(f32_ms):.2f} | {median(vs_f32):.2f}x ({vs_f32[0]:.2f}-{vs_f32[-1]:.2f}) | "
              f"{row['gflops']:.1f} | {100 * row['roofline_ratio']:.0f}% of "
              f"{row['roofline_gflops']:.0f} |", flush=True)
    goals.report()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    opts = ap.parse_args()
    reexec_with_threads(opts.threads)
    import torch
    torch.set_num_threads(opts.threads)

    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {opts.threads}, min-time {opts.min_time} s\n")
    if opts.precision == "bfloat16":
        return bfloat16_section(opts, torch)
    goals = Goals()
    print("| case (B, L, E, H) | weights | PyTorch ms | ours ms | speedup (rounds' range) | ours GFLOP/s | roofline | peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, weights, label in suite_cases(opts):
        B, L, E, H = c[1], c[2], c[4], c[5]
        row = ours(opts.build, bench_args(c, weights), opts.threads, opts.min_time, ["--roofline"])[0]
        ms, torch_ms = [], []
        for _ in range(max(1, opts.rounds)):
            ms.append(ours(opts.build, bench_args(c, weights), opts.threads, opts.min_time)[0]["ms_median"])
            torch_ms.append(float("nan") if opts.skip_torch else
                            torch_case(torch, c, weights, opts.min_time))
        speedups = sorted(t / m for t, m in zip(torch_ms, ms))
        if not opts.skip_torch:
            goals.speedups.append((median(speedups), f"{label} {weights}"))
        if (B, L, E, H) in PROJECTION_DOMINATED:
            goals.rooflines.append((row["roofline_ratio"], f"{label} {weights}"))
        print(f"| {label} | {weights} | {median(torch_ms):.2f} | {median(ms):.2f} | "
              f"{median(speedups):.2f}x ({speedups[0]:.2f}-{speedups[-1]:.2f}) | "
              f"{row['gflops']:.1f} | {100 * row['roofline_ratio']:.0f}% | "
              f"{row['peak_rss_mb']:.0f} |", flush=True)

    if not opts.only or "long" in opts.only:
        # O(L) memory: PyTorch would need B*H*L*S*4 = 32 GiB for the scores alone.
        row = ours(opts.build, ["--seq", "32768", "--embed", "512", "--heads", "8", "--self"],
                   opts.threads, 0)[0]
        print(f"| long self-attention, no projection (1, 32768, 512, 8) | none | (32 GiB of scores) | "
              f"{row['ms_median']:.0f} | - | {row['gflops']:.1f} | - | {row['peak_rss_mb']:.0f} |")
        goals.long_rss_mb = row["peak_rss_mb"]
        causal_ms = {}
        for causal in (False, True):
            args = ["--seq", "4096", "--embed", "1024", "--heads", "16", "--self"] + (["--causal"] if causal else [])
            r = ours(opts.build, args, opts.threads, opts.min_time)[0]
            causal_ms[causal] = r["ms_median"]
            print(f"| causal skip: (1, 4096, 1024, 16) no projection, causal={causal} | none | - | "
                  f"{r['ms_median']:.2f} | - | {r['gflops']:.1f} | - | {r['peak_rss_mb']:.0f} |")
        goals.causal_ratio = causal_ms[True] / causal_ms[False]

    if not opts.only or "threads" in opts.only:
        base = ["--seq", "128", "--embed", "512", "--heads", "8", "--self", "--projection"]
        one = ours(opts.build, base, 1, opts.min_time)[0]
        two = ours(opts.build, base, 2, opts.min_time)[0]
        goals.threads_ratio = two["ms_median"] / one["ms_median"]
        print(f"\nthreads at (1, 128, 512, 8): 1 thread {one['ms_median']:.3f} ms, "
              f"2 threads {two['ms_median']:.3f} ms (2 threads / 1 thread = "
              f"{two['ms_median'] / one['ms_median']:.2f} of the time)")

    overhead = not opts.only or "server" in opts.only
    clients = not opts.only or "clients" in opts.only
    if overhead or clients:
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "m512.safetensors")
            subprocess.run([os.path.join(opts.build, "bench", "attention-bench"), "--write-model", model,
                            "--embed", "512", "--heads", "8"], check=True)
            server = subprocess.Popen([os.path.join(opts.build, "server", "attention-server"),
                                       "--listen", "127.0.0.1:0", "--model", f"m512={model}",
                                       "--threads", str(opts.threads)],
                                      stdout=subprocess.PIPE, text=True)
            try:
                line = server.stdout.readline()
                port = line.split("listening on 127.0.0.1:")[1].split(";")[0]
                if overhead:
                    server_overhead(opts, port, goals)
                if clients:
                    print()
                    goals.clients = eight_clients(opts.build, port, max(2.0, opts.min_time), opts.rounds)
            finally:
                server.terminate()
                server.wait(timeout=30)

    goals.report()


if __name__ == "__main__":
    main()
