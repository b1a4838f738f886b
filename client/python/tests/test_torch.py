"""attention_client.torch.RemoteMultiheadAttention against a local
nn.MultiheadAttention and inside nn.TransformerEncoderLayer / Encoder, and
torch tensors into Client, against a real attention-server. Every test skips
where python3-torch is not installed."""

import os
import re
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np

from util import MODEL_FLAGS, SOURCE_DIR, Server, assert_close, free_port

try:
    import torch
    from torch import nn
except ImportError:
    torch = None

NO_TORCH = "python3-torch is not installed (scripts/install-deps.sh --torch installs it)"


def setUpModule():
    if torch is None:
        return
    global SERVER, TMP, Remote, Client
    from attention_client import Client
    from attention_client.torch import RemoteMultiheadAttention as Remote
    sys.path.insert(0, os.path.join(SOURCE_DIR, "scripts"))
    from export_model import export_mha

    torch.manual_seed(0)
    TMP = tempfile.TemporaryDirectory()
    modules = {
        "e64h4": nn.MultiheadAttention(64, 4, batch_first=True),
        "e32h2_kv": nn.MultiheadAttention(32, 2, kdim=24, vdim=16, bias=False, batch_first=True),
        "layer": nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
                                            batch_first=True).self_attn,
    }
    flags = list(MODEL_FLAGS)
    for name, module in modules.items():
        path = os.path.join(TMP.name, name + ".safetensors")
        export_mha(module, path)
        flags += ["--model", f"{name}={path}"]
    SERVER = Server(flags)
    SERVER.modules = modules


def tearDownModule():
    if torch is not None:
        SERVER.stop()
        TMP.cleanup()


def local(mha, *args, **kwargs):
    """The module's own forward (train mode with dropout 0: torch 1.13's eval
    fast path rejects modules without bias; the numbers are the same)."""
    mha.train()
    with torch.no_grad():
        return mha(*args, **kwargs)


def close(test, actual, expected, what="output"):
    test.assertEqual(actual.dtype, expected.dtype, what)
    assert_close(test, actual.numpy(), expected.numpy(), what=what)


@unittest.skipIf(torch is None, NO_TORCH)
class RemoteMultiheadAttentionTest(unittest.TestCase):
    def compare(self, mha, remote, query, key, value, **kwargs):
        expected = local(mha, query, key, value, **kwargs)
        got = remote(query, key, value, **kwargs)
        close(self, got[0], expected[0])
        if expected[1] is None:
            self.assertIsNone(got[1])
        else:
            close(self, got[1], expected[1], "weights")

    def test_incremental_decode_equals_the_causal_forward(self):
        mha = SERVER.modules["e64h4"]
        x = torch.randn(3, 16, 64)
        causal = torch.triu(torch.ones(16, 16, dtype=torch.bool), 1)
        expected = local(mha, x, x, x, attn_mask=causal, need_weights=False)[0]
        remote = Remote.from_module(mha, SERVER.target, "e64h4")
        steps = [remote.decode(x[:, :6])] + [remote.decode(x[:, t:t + 1]) for t in range(6, 16)]
        close(self, torch.cat(steps, dim=1), expected)
        remote.end_decode()
        close(self, remote.decode(x[0, :4]), expected[0, :4])  # starts over, unbatched
        with self.assertRaises(ValueError):
            remote.decode(x[:, :1])  # another batch size mid-decode
        remote.end_decode()
        with self.assertRaises(ValueError):
            Remote.from_module(mha, SERVER.target).decode(x)  # inline weights

    def test_served_and_inline_weights_match_the_module(self):
        mha = SERVER.modules["e64h4"]
        x = torch.randn(2, 10, 64)
        mem = torch.randn(2, 7, 64)
        kpm = torch.zeros(2, 7, dtype=torch.bool)
        kpm[1, 5:] = True
        causal = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
        for remote in (Remote.from_module(mha, SERVER.target, "e64h4"),
                       Remote.from_module(mha, SERVER.target)):
            with self.subTest(remote=repr(remote)):
                self.compare(mha, remote, x, x, x)
                self.compare(mha, remote, x, x, x, attn_mask=causal, need_weights=False)
                self.compare(mha, remote, x, mem, mem, key_padding_mask=kpm,
                             average_attn_weights=False)
                self.compare(mha, remote, x[0], mem[0], mem[0], key_padding_mask=kpm[0])
                self.compare(mha, remote, x, mem, mem,
                             key_padding_mask=torch.where(kpm, -1e4, 0.0))

    def test_kdim_vdim_without_bias(self):
        mha = SERVER.modules["e32h2_kv"]
        q, k, v = torch.randn(3, 5, 32), torch.randn(3, 8, 24), torch.randn(3, 8, 16)
        for remote in (Remote.from_module(mha, SERVER.target, "e32h2_kv"),
                       Remote.from_module(mha, SERVER.target)):
            self.compare(mha, remote, q, k, v, average_attn_weights=False)

    def test_sequence_first_module(self):
        mha = nn.MultiheadAttention(32, 4)  # batch_first=False
        x, mem = torch.randn(6, 2, 32), torch.randn(9, 2, 32)
        remote = Remote.from_module(mha, SERVER.target)
        self.assertFalse(remote.batch_first)
        self.compare(mha, remote, x, x, x)
        self.compare(mha, remote, x, mem, mem, need_weights=False)

    def test_dtypes_and_non_contiguous_inputs(self):
        mha = SERVER.modules["e64h4"]
        remote = Remote.from_module(mha, SERVER.target, "e64h4")
        x = torch.randn(2, 64, 10).transpose(1, 2)  # [2, 10, 64], not contiguous
        self.assertFalse(x.is_contiguous())
        expected, _ = local(mha, x, x, x)
        out, w = remote(x.double(), x.double(), x.double())
        self.assertEqual(out.dtype, torch.float64)
        self.assertEqual(w.dtype, torch.float64)
        assert_close(self, out.numpy(), expected.numpy())
        out, _ = remote(x.half(), x.half(), x.half(), need_weights=False)
        self.assertEqual(out.dtype, torch.float16)
        assert_close(self, out.float().numpy(), expected.numpy(), 1e-2)
        xb = x.bfloat16()
        out, _ = remote(xb, xb, xb, need_weights=False)
        self.assertEqual(out.dtype, torch.bfloat16)
        assert_close(self, out.float().numpy(), expected.numpy(), 5e-2)

    def test_errors_raise_the_service_status(self):
        import grpc
        from attention_client import Error
        remote = Remote(SERVER.target, model="no_such_model")
        x = torch.randn(1, 4, 64)
        with self.assertRaises(Error) as e:
            remote(x, x, x)
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        with self.assertRaisesRegex(ValueError, "num_heads"):
            Remote(SERVER.target)


@unittest.skipIf(torch is None, NO_TORCH)
class TransformerTest(unittest.TestCase):
    """The remote module as layer.self_attn: same outputs as before the swap.

    torch's eval-mode fast path would skip self_attn.forward altogether; the
    mock counts the calls to show the service computed every attention."""

    def layer(self):
        torch.manual_seed(1)
        layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
                                           batch_first=True)
        layer.self_attn.load_state_dict(SERVER.modules["layer"].state_dict())
        return layer.eval()

    def test_encoder_layer_in_eval_mode(self):
        layer = self.layer()
        x = torch.randn(2, 12, 64)
        kpm = torch.zeros(2, 12, dtype=torch.bool)
        kpm[0, 9:] = True
        with torch.no_grad():
            expected = layer(x)
            expected_masked = layer(x, src_key_padding_mask=kpm)
            expected_causal = layer(x, src_mask=torch.triu(torch.full((12, 12), -1e9), 1))
        layer.self_attn = Remote.from_module(layer.self_attn, SERVER.target, "layer")
        with mock.patch.object(Remote, "forward", autospec=True,
                               side_effect=Remote.forward) as forward, torch.no_grad():
            close(self, layer(x), expected)
            got = layer(x, src_key_padding_mask=kpm)
            # 1.13's fast path gives padded positions zeros; the slow path computes them.
            assert_close(self, got[0, :9].numpy(), expected_masked[0, :9].numpy())
            assert_close(self, got[1].numpy(), expected_masked[1].numpy())
            close(self, layer(x, src_mask=torch.triu(torch.full((12, 12), -1e9), 1)),
                  expected_causal)
        self.assertEqual(forward.call_count, 3)

    def test_encoder_stack(self):
        encoder = nn.TransformerEncoder(self.layer(), num_layers=2).eval()
        x = torch.randn(2, 12, 64)
        kpm = torch.zeros(2, 12, dtype=torch.bool)
        kpm[1, 7:] = True
        with torch.no_grad():
            expected = encoder(x)
            expected_masked = encoder(x, src_key_padding_mask=kpm)
        for layer in encoder.layers:  # both layers are clones of the served one
            layer.self_attn = Remote.from_module(layer.self_attn, SERVER.target, "layer")
        with torch.no_grad():
            close(self, encoder(x), expected)
            got = encoder(x, src_key_padding_mask=kpm)
        # The fast path (nested tensors) leaves padded positions zero; compare the others.
        assert_close(self, got[0].numpy(), expected_masked[0].numpy())
        assert_close(self, got[1, :7].numpy(), expected_masked[1, :7].numpy())


@unittest.skipIf(torch is None, NO_TORCH)
class ExampleTest(unittest.TestCase):
    def test_example_shows_the_modules_numbers(self):
        example = os.path.join(SOURCE_DIR, "client", "python", "examples", "compare_with_torch.py")
        env = {**os.environ, "PYTHONPATH": os.path.join(SOURCE_DIR, "client", "python")}
        run = subprocess.run([sys.executable, example, str(free_port())], cwd=SOURCE_DIR, env=env,
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        m = re.search(r"output ([0-9.e+-]+), weights ([0-9.e+-]+)", run.stdout)
        self.assertIsNotNone(m, run.stdout)
        self.assertLess(float(m.group(1)), 1e-4)
        self.assertLess(float(m.group(2)), 1e-4)


@unittest.skipIf(torch is None, NO_TORCH)
class TorchTensorsTest(unittest.TestCase):
    def test_bfloat16_conversion_matches_torch(self):
        import attention_client
        x = torch.cat([torch.randn(10000) * 10.0 ** torch.randint(-30, 30, (10000,)),
                       torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 3.4e38, -3.4e38,
                                     1e-40, 1.00390625, 1.01171875])])
        ours = attention_client.float32_to_bfloat16_bits(x.numpy())
        theirs = x.bfloat16().view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(attention_client.bfloat16_bits_to_float32(theirs),
                                      x.bfloat16().float().numpy())

    def test_tensors_into_client(self):
        with Client(SERVER.target) as client:
            x = torch.randn(2, 10, 64)
            expected, weights = client.self_attention(x.numpy(), model="demo", weights="average")
            got, got_w = client.self_attention(x.t() if False else x.transpose(0, 1).contiguous()
                                               .transpose(0, 1), model="demo", weights="average")
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(got_w, weights)
            mask = torch.zeros(2, 10, dtype=torch.bool)
            mask[:, 8:] = True
            got, _ = client.self_attention(x, model="demo", key_padding_mask=mask)
            want, _ = client.self_attention(x.numpy(), model="demo",
                                            key_padding_mask=mask.numpy())
            np.testing.assert_array_equal(got, want)
            # A bfloat16 tensor travels as its own bits.
            got, _ = client.self_attention(x.bfloat16(), model="demo")
            want, _ = client.self_attention(x.bfloat16().float().numpy(), model="demo",
                                            wire_dtype="bfloat16")
            np.testing.assert_array_equal(got, want)


if __name__ == "__main__":
    unittest.main()
