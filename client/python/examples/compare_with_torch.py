"""Export an nn.MultiheadAttention, serve it, and compare the service's answer with the module's.

Run from the repository root after the build (scripts/build.sh); needs python3-torch:

    PYTHONPATH=client/python /usr/bin/python3 client/python/examples/compare_with_torch.py [PORT]
"""
import os, subprocess, sys, tempfile
import torch
sys.path.insert(0, "scripts")
from export_model import export_mha  # noqa: E402
from attention_client.torch import RemoteMultiheadAttention  # noqa: E402

mha = torch.nn.MultiheadAttention(embed_dim=64, num_heads=4, batch_first=True).eval()
path = os.path.join(tempfile.mkdtemp(), "mine.safetensors")
export_mha(mha, path)
target = "127.0.0.1:" + (sys.argv[1] if len(sys.argv) > 1 else "50061")
server_bin = os.environ.get("ATTENTION_SERVER_BIN", "build/server/attention-server")
server = subprocess.Popen([server_bin, "--listen", target, "--model", "mine=" + path])
try:
    remote = RemoteMultiheadAttention.from_module(mha, target, "mine", retries=20)  # waits for start-up
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        expected, expected_weights = mha(x, x, x)
    output, weights = remote(x, x, x)
    print("max |service - module|: output %.2g, weights %.2g"
          % ((output - expected).abs().max(), (weights - expected_weights).abs().max()))
finally:
    server.terminate()
    server.wait()
