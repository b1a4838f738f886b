"""Test helpers: a real attention-server process on 127.0.0.1, the PyTorch
fixtures (tests/fixtures/*.safetensors, read with json and numpy alone) as
client calls, and the parity tolerance of docs/api.md.

ctest passes ATTENTION_SERVER_BIN (the built server) and ATTENTION_SOURCE_DIR.
"""

import glob
import json
import os
import re
import socket
import struct
import subprocess
import time

import numpy as np

SOURCE_DIR = os.environ.get(
    "ATTENTION_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
SERVER_BIN = os.environ.get("ATTENTION_SERVER_BIN",
                            os.path.join(SOURCE_DIR, "build", "server", "attention-server"))

# The models the e2e fixtures name, as the C++ end-to-end tests serve them.
MODEL_FLAGS = [
    "--model", "demo=" + os.path.join(SOURCE_DIR, "models", "demo.safetensors"),
    "--model", "mha_e32_h4=" + os.path.join(SOURCE_DIR, "tests/fixtures/models/mha_e32_h4.safetensors"),
    "--model", "mha_e32_h2_kv=" + os.path.join(SOURCE_DIR,
                                                "tests/fixtures/models/mha_e32_h2_kv.safetensors"),
]

PROJECTION_NAMES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                    "in_proj_bias", "out_proj.weight", "out_proj.bias")


class Server:
    """attention-server on 127.0.0.1: port 0 (the kernel's pick) unless
    `port` is given. `target` is where it listens; stop() kills it."""

    def __init__(self, flags=(), port=0):
        argv = [SERVER_BIN, "--listen", f"127.0.0.1:{port}", *flags]
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self._process.stdout.readline().decode(errors="replace")
            if not line and self._process.poll() is not None:
                break
            self.output += line
            m = re.search(r"listening on ([^;\s]+);", line)
            if m:
                self.target = m.group(1)
                return
        self.stop()
        raise RuntimeError(f"attention-server did not start: {self.output}")

    def stop(self):
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdout.close()

    def drain(self, timeout=30):
        """SIGTERM (the server drains, then exits); waits for the exit."""
        self._process.terminate()
        self._process.wait(timeout)
        self._process.stdout.close()


def free_port():
    """A port nothing listens on now (for tests that start a server later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_safetensors(path):
    """(dict name -> numpy array, metadata dict) of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    metadata = header.pop("__metadata__", {})
    dtypes = {"F32": "<f4", "F16": "<f2", "BOOL": "u1"}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        a = np.frombuffer(blob[8 + n + begin:8 + n + end], dtype=dtypes[info["dtype"]])
        a = a.reshape(info["shape"])
        tensors[name] = a != 0 if info["dtype"] == "BOOL" else a.astype(np.float32)
    return tensors, metadata


class Fixture:
    """One fixture as a call: `kind` ("attention" or "self_attention"),
    `inputs` (query/key/value or input), `options` (the client's keywords),
    `expected_output`, `expected_weights` (None when weights are not asked)."""

    def __init__(self, path):
        t, meta = read_safetensors(path)
        self.name = os.path.basename(path)[:-len(".safetensors")]
        self.kind = meta["kind"]
        names = ("input",) if self.kind == "self_attention" else ("query", "key", "value")
        self.inputs = {n: t[n] for n in names}
        self.options = {
            "heads": int(meta["num_heads"]),
            "kv_heads": int(meta.get("num_kv_heads", "0")),
            "causal": meta.get("causal") == "1",
            "weights": {"none": "none", "average": "average", "per_head": "per-head"}[
                meta["weights"]],
        }
        if "scale" in meta:
            self.options["scale"] = float(meta["scale"])
        for mask in ("attn_mask", "key_padding_mask"):
            if mask in t:
                self.options[mask] = t[mask]
        projection = {n: t[n] for n in PROJECTION_NAMES if n in t}
        if projection:
            self.options["projection"] = projection
        if "model" in meta:
            self.options["model"] = meta["model"]
        self.expected_output = t["expected_output"]
        self.expected_weights = t.get("expected_weights")

    def call(self, client, **overrides):
        """The unary call; returns (output, weights)."""
        kwargs = {**self.inputs, **self.options, **overrides}
        if self.kind == "self_attention":
            return client.self_attention(**kwargs)
        return client.attention(**kwargs)

    def request(self, **overrides):
        """The call as a stream request dict."""
        return {**self.inputs, **self.options, **overrides}


def fixtures():
    return [Fixture(p) for p in sorted(glob.glob(
        os.path.join(SOURCE_DIR, "tests", "fixtures", "*.safetensors")))]


def assert_close(test, actual, expected, tolerance=1e-4, what="output"):
    """The parity check (docs/api.md): max |actual - expected| <= tolerance x max |expected|."""
    test.assertEqual(tuple(actual.shape), tuple(expected.shape), what)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    bound = tolerance * max(np.abs(expected).max(initial=0.0), 1e-30)
    error = np.abs(actual - expected).max(initial=0.0)
    test.assertLessEqual(error, bound, f"{what}: max abs error {error:g} > {bound:g}")
