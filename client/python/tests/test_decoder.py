"""attention_client.Decoder (Client.decoder) against a real attention-server:
a message-by-message decode equals the causal forward (the server's own
SelfAttention, itself checked against PyTorch's fixtures), plain attention
with keys and values, weights, refused messages that change nothing, and the
replay with retries: a server killed (SIGKILL) or drained mid-decode and
another started on its port, the outputs equal to an uninterrupted run's (to
float32 rounding)."""

import threading
import unittest

import grpc
import numpy as np

from attention_client import Client, Decoder, Error
from util import MODEL_FLAGS, Server, free_port


def setUpModule():
    global SERVER
    SERVER = Server(MODEL_FLAGS)


def tearDownModule():
    SERVER.stop()


def tokens(n, width=64, seed=0):
    return np.random.RandomState(seed).randn(n, width).astype(np.float32)


def decode(decoder, sequence, x, prefill=10, fault=None):
    """x decoded on `decoder`: a prefill, then one row a message; `fault(t)`
    runs before row t."""
    outs = [decoder.append(sequence, input=x[:prefill])[0]]
    for t in range(prefill, len(x)):
        if fault is not None:
            fault(t)
        outs.append(decoder.append(sequence, input=x[t:t + 1])[0])
    return np.concatenate(outs)


class DecoderTest(unittest.TestCase):
    def setUp(self):
        self.client = Client(SERVER.target)

    def tearDown(self):
        self.client.close()

    def test_decode_equals_the_causal_forward(self):
        x = tokens(40)
        full, _ = self.client.self_attention(x[None], model="demo", causal=True)
        with self.client.decoder(model="demo") as d:
            self.assertIsInstance(d, Decoder)
            got = decode(d, "a", x)
            self.assertEqual(d.length("a"), 40)
            d.end("a")
            self.assertEqual(d.length("a"), 0)
        np.testing.assert_allclose(got, full[0], rtol=0, atol=1e-5)

    def test_plain_attention_with_keys_values_and_weights(self):
        q, k, v = tokens(12, 32, 1), tokens(12, 16, 2), tokens(12, 32, 3)
        want, _ = self.client.attention(q[None], k[None], v[None], heads=4, kv_heads=2,
                                        causal=True)
        with self.client.decoder(heads=4, kv_heads=2) as d:
            out, w = d.append("p", query=q[:5], key=k[:5], value=v[:5], weights="average")
            self.assertEqual(w.shape, (5, 5))
            np.testing.assert_allclose(w.sum(axis=-1), 1, atol=1e-5)
            rows = [out]
            for t in range(5, 12):
                out, w = d.append("p", query=q[t:t + 1], key=k[t:t + 1], value=v[t:t + 1],
                                  weights="per-head")
                self.assertEqual(w.shape, (4, 1, t + 1))
                rows.append(out)
        np.testing.assert_allclose(np.concatenate(rows), want[0], rtol=0, atol=1e-5)

    def test_a_refused_message_changes_nothing(self):
        x = tokens(20)
        with self.client.decoder(model="demo") as d:
            d.append("a", input=x[:10])
            with self.assertRaises(Error) as e:
                d.append("a", input=tokens(1, 32))  # the model's E is 64
            self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("input: width 32", str(e.exception))
            self.assertEqual(d.length("a"), 10)
            out, _ = d.append("a", input=x[10:11])
        full, _ = self.client.self_attention(x[None, :11], model="demo", causal=True)
        np.testing.assert_allclose(out[0], full[0, 10], rtol=0, atol=1e-5)
        with self.assertRaises(ValueError):
            self.client.decoder(precision="float64")

    def _replay(self, stop):
        """Two sequences decoded while their server is stopped with `stop` at
        token 25 and another comes up on its port: equal to a clean run."""
        x, y = tokens(50, seed=5), tokens(50, seed=6)
        with self.client.decoder(model="demo") as d:
            want = decode(d, "x", x), decode(d, "y", y)
        port = free_port()
        servers = [Server(MODEL_FLAGS, port=port)]
        restart = threading.Timer(0.3, lambda: servers.append(Server(MODEL_FLAGS, port=port)))

        def fault(t):
            if t == 25:
                stop(servers[0])
                restart.start()

        try:
            with Client(f"127.0.0.1:{port}") as client, \
                    client.decoder(model="demo", retries=8) as d:
                d.append("y", input=y[:10])
                got_x = decode(d, "x", x, fault=fault)
                self.assertGreaterEqual(d.retried, 1)
                self.assertEqual(d.length("y"), 10)  # rebuilt too
                rest = [d.append("y", input=y[t:t + 1])[0] for t in range(10, 50)]
            got_y = np.concatenate([want[1][:10]] + rest)
            # To float32 rounding: a rebuilt sequence's keys come from one product
            # over all its tokens (bit for bit on AVX-512 machines).
            for got, expected in ((got_x, want[0]), (got_y, want[1])):
                np.testing.assert_allclose(got, expected, rtol=0,
                                           atol=1e-5 * np.abs(expected).max())
        finally:
            if restart.is_alive():
                restart.join()
            for s in servers:
                s.stop()

    def test_replays_through_a_killed_server(self):
        self._replay(Server.stop)

    def test_replays_through_a_drained_server(self):
        self._replay(Server.drain)

    def test_without_retries_a_broken_stream_is_an_error(self):
        port = free_port()
        server = Server(MODEL_FLAGS, port=port)
        try:
            with Client(f"127.0.0.1:{port}") as client, client.decoder(model="demo") as d:
                d.append("a", input=tokens(3))
                server.stop()
                with self.assertRaises(Error) as e:
                    d.append("a", input=tokens(1))
                self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
                self.assertEqual(d.length("a"), 0)  # nothing outlives the stream
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
