"""attention_client.Client against a real attention-server, checked against
the committed PyTorch fixtures (no torch needed): every method, streams with a
refused message in the middle, errors, wire dtypes, masks, non-contiguous
inputs, retries; TLS, mutual TLS and tokens against attention-server (and what
a refused handshake's error says to check), and what the client sends against
an in-process Python gRPC server."""

import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc
import numpy as np

import attention_client
from attention_client import Client, Error
from attention_client._proto import health_pb2
from util import MODEL_FLAGS, Fixture, Server, assert_close, fixtures, free_port, SOURCE_DIR

FIXTURES = fixtures()


def setUpModule():
    global SERVER
    SERVER = Server(MODEL_FLAGS)


def tearDownModule():
    SERVER.stop()


def fixture(name):
    return next(f for f in FIXTURES if f.name == name)


def bfloat16_round(x):
    return attention_client.bfloat16_bits_to_float32(attention_client.float32_to_bfloat16_bits(x))


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.client = Client(SERVER.target)

    def tearDown(self):
        self.client.close()

    def check(self, f, result, tolerance=1e-4):
        output, weights = result
        assert_close(self, output, f.expected_output, tolerance)
        if f.expected_weights is None:
            self.assertIsNone(weights)
        else:
            self.assertEqual(weights.dtype, np.float32)
            assert_close(self, weights, f.expected_weights, tolerance, "weights")

    def test_every_fixture_unary(self):
        self.assertGreater(len(FIXTURES), 30)
        for f in FIXTURES:
            with self.subTest(f.name):
                output, weights = f.call(self.client)
                self.assertEqual(output.dtype, np.float32)
                self.assertTrue(output.flags.writeable)
                self.check(f, (output, weights))

    def test_streams_go_on_past_a_refused_message(self):
        cases = {
            "attention": (self.client.stream_attention,
                          {"key": np.zeros((9, 7, 32), np.float32)}, grpc.StatusCode.INVALID_ARGUMENT),
            "self_attention": (self.client.stream_self_attention,
                               {"model": "no_such_model", "projection": None},
                               grpc.StatusCode.NOT_FOUND),
        }
        for kind, (stream, bad_overrides, bad_code) in cases.items():
            with self.subTest(kind):
                good = [f for f in FIXTURES if f.kind == kind]
                middle = len(good) // 2
                requests = [f.request() for f in good]
                requests.insert(middle, good[0].request(**bad_overrides))
                results = list(stream(iter(requests)))
                self.assertEqual(len(results), len(good) + 1)
                bad = results.pop(middle)
                self.assertIsInstance(bad, Error)
                self.assertEqual(bad.code, bad_code)
                for f, result in zip(good, results):
                    self.assertNotIsInstance(result, Error, f.name)
                    self.check(f, result)

    def test_stream_request_that_cannot_be_built_raises_after_earlier_answers(self):
        f = fixture("mha_self_packed_bias_avg")
        stream = self.client.stream_self_attention([f.request(), f.request(weights="bogus"),
                                                    f.request()])
        self.check(f, next(stream))
        with self.assertRaisesRegex(ValueError, "weights"):
            next(stream)

    def test_errors_carry_code_and_message(self):
        f = fixture("sdpa_cross_none")
        with self.assertRaises(Error) as e:
            f.call(self.client, key=np.zeros((3, 9, 32), np.float32))
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("key", e.exception.message)
        self.assertTrue(str(e.exception).startswith("INVALID_ARGUMENT: "), str(e.exception))

        with self.assertRaises(Error) as e:
            self.client.self_attention(np.zeros((1, 4, 64), np.float32), model="no_such_model")
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no_such_model", e.exception.message)
        self.assertIn("NOT_FOUND", str(e.exception))

        big = np.zeros((8, 1024, 512), np.float32)
        with self.assertRaises(Error) as e:
            self.client.self_attention(big, heads=8, timeout=1e-4)
        self.assertEqual(e.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_arguments_that_cannot_be_sent(self):
        x = np.zeros((1, 4, 8), np.float32)
        with self.assertRaisesRegex(ValueError, "weights"):
            self.client.self_attention(x, heads=2, weights="all")
        with self.assertRaisesRegex(ValueError, "wire_dtype"):
            self.client.self_attention(x, heads=2, wire_dtype="int8")
        with self.assertRaisesRegex(ValueError, "precision"):
            self.client.self_attention(x, heads=2, precision="float64")
        with self.assertRaisesRegex(TypeError, "input"):
            self.client.self_attention(x.astype(np.complex64), heads=2)
        with self.assertRaisesRegex(TypeError, "attn_mask"):
            self.client.self_attention(x, heads=2, attn_mask=np.zeros((4, 4), np.int32))
        with self.assertRaisesRegex(ValueError, "projection"):
            self.client.self_attention(x, heads=2, projection={"bias_k": x})
        with self.assertRaises(TypeError):
            self.client.self_attention(x, heads=2, no_such_option=1)

    def test_precision_is_accepted(self):
        f = fixture("sdpa_self_causal_avg")
        self.check(f, f.call(self.client, precision="float32"))
        # bfloat16 products (float32 on a CPU without them): within bfloat16's
        # accuracy either way.
        self.check(f, f.call(self.client, precision="bfloat16"), tolerance=3e-2)

    def test_wire_float16(self):
        for f in FIXTURES:
            with self.subTest(f.name):
                output, weights = f.call(self.client, wire_dtype="float16")
                self.assertEqual(output.dtype, np.float16)
                # Exactly what float32 compute gives on the float16-rounded inputs,
                # rounded to float16 once more.
                rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in f.inputs.items()}
                reference, ref_weights = f.call(self.client, **rounded)
                assert_close(self, output, reference.astype(np.float16), 1e-3)
                assert_close(self, output, f.expected_output, 1e-2)
                if weights is not None:
                    assert_close(self, weights, ref_weights, 1e-5, "weights")
        # float16 arrays travel as float16 unless told otherwise.
        f = fixture("sdpa_cross_none")
        output, _ = f.call(self.client, **{k: v.astype(np.float16) for k, v in f.inputs.items()})
        self.assertEqual(output.dtype, np.float16)
        output, _ = f.call(self.client, wire_dtype="float32",
                           **{k: v.astype(np.float16) for k, v in f.inputs.items()})
        self.assertEqual(output.dtype, np.float32)

    def test_wire_bfloat16(self):
        for f in FIXTURES:
            with self.subTest(f.name):
                output, weights = f.call(self.client, wire_dtype="bfloat16")
                self.assertEqual(output.dtype, np.float32)  # numpy has no bfloat16
                self.assertFalse((output.view(np.uint32) & 0xFFFF).any(), "not bfloat16 values")
                rounded = {k: bfloat16_round(v) for k, v in f.inputs.items()}
                reference, ref_weights = f.call(self.client, **rounded)
                # One bfloat16 rounding of the output: at most 2^-8 relative.
                np.testing.assert_array_less(np.abs(output - reference),
                                             np.abs(reference) * 2.0 ** -8 + 1e-30 +
                                             1e-4 * np.abs(reference).max())
                assert_close(self, output, f.expected_output, 5e-2)
                if weights is not None:
                    assert_close(self, weights, ref_weights, 1e-5, "weights")

    def test_bfloat16_rounds_to_nearest_even(self):
        bits = np.array([0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF,
                         0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x80000000],
                        dtype=np.uint32)
        expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x7F80, 0xFF80, 0x7F80, 0x0000, 0x8000]
        got = attention_client.float32_to_bfloat16_bits(bits.view(np.float32))
        self.assertEqual([hex(b) for b in got], [hex(b) for b in expected])
        nan = attention_client.float32_to_bfloat16_bits(np.array([np.nan, -np.nan], np.float32))
        self.assertTrue(np.isnan(attention_client.bfloat16_bits_to_float32(nan)).all())
        self.assertEqual(attention_client.bfloat16_bits_to_float32(np.array([0x3F80], np.uint16))[0],
                         1.0)

    def test_bool_and_byte_masks(self):
        for name in ("mha_kpm_bool_avg", "mha_attn_mask_bool_2d_avg", "sdpa_fully_masked_rows_perhead"):
            f = fixture(name)
            with self.subTest(name):
                masks = {k: v for k, v in f.options.items() if k.endswith("mask")}
                self.assertTrue(all(m.dtype == np.bool_ for m in masks.values()))
                self.check(f, f.call(self.client, **{k: m.astype(np.uint8)
                                                      for k, m in masks.items()}))
                self.check(f, f.call(self.client, **{k: m.tolist() for k, m in masks.items()}))
                # The same masks as float -inf (added to the scores) give the same answer.
                if name != "sdpa_fully_masked_rows_perhead":
                    self.check(f, f.call(self.client, **{
                        k: np.where(m, -np.inf, 0).astype(np.float32) for k, m in masks.items()}))

    def test_non_contiguous_and_other_dtypes(self):
        for name in ("mha_cross_kvdim_bias_perhead", "sdpa_gqa_avg", "mha_kpm_bool_avg"):
            f = fixture(name)
            with self.subTest(name):
                strided = {}
                for k, v in f.inputs.items():
                    wide = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), np.float64)
                    wide[..., 1::2] = v
                    strided[k] = wide[..., 1::2]
                    self.assertFalse(strided[k].flags.c_contiguous)
                self.check(f, f.call(self.client, **strided))
                self.check(f, f.call(self.client, **{k: np.asfortranarray(v)
                                                      for k, v in f.inputs.items()}))
                transposed = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)).swapaxes(0, 1)
                              for k, v in f.inputs.items()}
                self.check(f, f.call(self.client, **transposed))

    def test_models_limits_health(self):
        models = {m["name"]: m for m in self.client.models()}
        self.assertEqual(set(models), {"demo", "mha_e32_h4", "mha_e32_h2_kv"})
        self.assertEqual(models["demo"], {"name": "demo", "embed_dim": 64, "num_heads": 4,
                                          "kdim": 64, "vdim": 64, "bias": True})
        self.assertEqual(models["mha_e32_h2_kv"]["kdim"], 24)
        self.assertFalse(models["mha_e32_h2_kv"]["bias"])
        limits = self.client.server_limits()
        self.assertGreater(limits["max_message_bytes"], 0)
        self.assertGreater(limits["compute_threads"], 0)
        self.assertEqual(self.client.health(), "SERVING")

    def test_concurrent_calls_share_a_client(self):
        f = fixture("e2e_demo_self_avg")
        with futures.ThreadPoolExecutor(4) as pool:
            for result in pool.map(lambda _: f.call(self.client), range(16)):
                self.check(f, result)


class RetryTest(unittest.TestCase):
    def test_gives_up_after_the_retries(self):
        with Client(f"127.0.0.1:{free_port()}", retries=2) as client:
            start = time.monotonic()
            with self.assertRaises(Error) as e:
                client.health()
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
            self.assertGreaterEqual(time.monotonic() - start, 0.2)  # two backoffs: >= 0.075 + 0.15
        with Client(f"127.0.0.1:{free_port()}") as client, self.assertRaises(Error):
            client.health()

    def test_unary_call_succeeds_once_the_server_is_up(self):
        port = free_port()
        f = fixture("e2e_demo_self_avg")
        servers = []
        starter = threading.Timer(0.5, lambda: servers.append(Server(MODEL_FLAGS, port=port)))
        starter.start()
        try:
            with Client(f"127.0.0.1:{port}", retries=10) as client:
                output, weights = f.call(client)
            assert_close(self, output, f.expected_output)
            assert_close(self, weights, f.expected_weights)
        finally:
            starter.join()
            for s in servers:
                s.stop()

    def test_stream_resends_what_a_lost_server_did_not_answer(self):
        port = free_port()
        servers = [Server(MODEL_FLAGS, port=port)]
        f = fixture("e2e_demo_self_avg")
        n, lost_after = 12, 5

        def requests():
            for i in range(n):
                if i == lost_after:  # the server dies; another comes up on the same port
                    servers[-1].stop()
                    servers.append(Server(MODEL_FLAGS, port=port))
                yield {**f.request(), "input": f.inputs["input"] * (1 + i)}

        try:
            with Client(f"127.0.0.1:{port}", retries=5) as client:
                results = list(client.stream_self_attention(requests()))
            self.assertEqual(len(results), n)
            with Client(servers[-1].target) as client:
                for i, result in enumerate(results):
                    expected = client.self_attention(**{**f.request(),
                                                        "input": f.inputs["input"] * (1 + i)})
                    assert_close(self, result[0], expected[0])
        finally:
            for s in servers:
                s.stop()


class _RecordingHealth(grpc.GenericRpcHandler):
    """A Health service that records each call's metadata."""

    def __init__(self):
        self.metadata = []

    def service(self, details):
        if details.method != "/grpc.health.v1.Health/Check":
            return None

        def check(request, context):
            self.metadata.append(dict(context.invocation_metadata()))
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        return grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString)


class TokenAndTlsTest(unittest.TestCase):
    """Against an in-process Python gRPC server: what the client sends and how
    it connects."""

    def start(self, credentials=None):
        self.handler = _RecordingHealth()
        self.server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[self.handler])
        if credentials is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()
        self.addCleanup(self.server.stop, None)
        return f"127.0.0.1:{port}"

    def test_a_token_never_travels_in_plaintext(self):
        target = self.start()
        with self.assertRaisesRegex(ValueError, "needs TLS"):
            Client(target, token="s3cret")
        old = os.environ.pop("ATTENTION_TOKEN", None)
        try:
            os.environ["ATTENTION_TOKEN"] = "from-env"
            with Client(target) as client:  # plaintext: the environment's token stays home
                client.health()
        finally:
            os.environ.pop("ATTENTION_TOKEN", None)
            if old is not None:
                os.environ["ATTENTION_TOKEN"] = old
        self.assertEqual([m.get("authorization") for m in self.handler.metadata], [None])

    @unittest.skipIf(shutil.which("openssl") is None, "openssl is not installed")
    def test_tls_and_mutual_tls(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)

        def run(*args):
            subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=test-ca")
        for name in ("server", "client"):
            run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}")
            with open(os.path.join(tmp, f"{name}.ext"), "w") as ext:
                ext.write("subjectAltName=DNS:attention.test\n")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
        read = lambda n: open(os.path.join(tmp, n), "rb").read()  # noqa: E731
        path = lambda n: os.path.join(tmp, n)  # noqa: E731
        credentials = grpc.ssl_server_credentials([(read("server.key"), read("server.pem"))],
                                                  root_certificates=read("ca.pem"),
                                                  require_client_auth=True)
        target = self.start(credentials)
        with Client(target, tls_ca=path("ca.pem"), tls_cert=path("client.pem"),
                    tls_key=path("client.key"), tls_server_name="attention.test",
                    token="t") as client:
            self.assertEqual(client.health(), "SERVING")
        self.assertEqual(self.handler.metadata[-1]["authorization"], "Bearer t")
        old = os.environ.pop("ATTENTION_TOKEN", None)
        os.environ["ATTENTION_TOKEN"] = "from-env"  # on a TLS channel it is sent
        try:
            with Client(target, tls_ca=path("ca.pem"), tls_cert=path("client.pem"),
                        tls_key=path("client.key"), tls_server_name="attention.test") as client:
                client.health()
        finally:
            os.environ.pop("ATTENTION_TOKEN", None)
            if old is not None:
                os.environ["ATTENTION_TOKEN"] = old
        self.assertEqual(self.handler.metadata[-1]["authorization"], "Bearer from-env")
        # Without a client certificate the handshake fails; without the CA the
        # server is not trusted; both are UNAVAILABLE (gRPC logs the two
        # handshake failures on stderr).
        for kwargs in ({"tls_ca": path("ca.pem")}, {"tls": True}):
            with Client(target, tls_server_name="attention.test", **kwargs) as client:
                with self.assertRaises(Error) as e:
                    client.health(timeout=5)
                self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
        with self.assertRaisesRegex(ValueError, "together"):
            Client(target, tls_cert=path("client.pem"))


@unittest.skipIf(shutil.which("openssl") is None, "openssl is not installed")
class AttentionServerSecurityTest(unittest.TestCase):
    """attention-server with mutual TLS and tokens, certificates from
    scripts/make-certs.sh."""

    def certificates(self):
        """A path function into a new directory of scripts/make-certs.sh's files."""
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        subprocess.run(["bash", os.path.join(SOURCE_DIR, "scripts", "make-certs.sh"), tmp],
                       check=True, capture_output=True)
        return lambda n: os.path.join(tmp, n)

    def test_mutual_tls_and_tokens(self):
        path = self.certificates()
        with open(path("tokens"), "w") as f:
            f.write("# callers\npython-token\n")
        server = Server([*MODEL_FLAGS, "--tls-cert", path("server.pem"), "--tls-key",
                         path("server.key"), "--tls-client-ca", path("ca.pem"),
                         "--auth-token-file", path("tokens")])
        self.addCleanup(server.stop)
        f = fixture("e2e_demo_self_avg")
        mtls = {"tls_ca": path("ca.pem"), "tls_cert": path("client.pem"),
                "tls_key": path("client.key")}
        with Client(server.target, token="python-token", **mtls) as client:
            output, weights = f.call(client)
            assert_close(self, output, f.expected_output, 1e-4)
            assert_close(self, weights, f.expected_weights, 1e-4, "weights")
        with Client(server.target, **mtls) as client:
            self.assertEqual(client.health(), "SERVING")  # health needs no token
            with self.assertRaises(Error) as e:
                client.models()
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("authorization: missing", str(e.exception))
        with Client(server.target, tls_ca=path("ca.pem"), token="python-token") as client:
            with self.assertRaises(Error) as e:  # no client certificate
                client.models(timeout=5)
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_a_refused_handshake_says_what_to_check(self):
        # gRPC reads a server that closes the handshake (it refused the client
        # certificate) as UNAVAILABLE "Socket closed" alone; the error says
        # what to check, as attention-client does.
        path = self.certificates()
        server = Server(["--tls-cert", path("server.pem"), "--tls-key", path("server.key"),
                         "--tls-client-ca", path("ca.pem")])
        self.addCleanup(server.stop)
        cases = [
            ({"tls_cert": path("rogue-client.pem"), "tls_key": path("rogue-client.key")},
             ["closed during the handshake", "refused the client certificate",
              "tls_cert must be signed by a CA in the server's --tls-client-ca"]),
            ({}, ["closed during the handshake", "may require a client certificate",
                  "tls_cert and tls_key"]),
        ]
        for kwargs, hints in cases:
            with Client(server.target, tls_ca=path("ca.pem"), **kwargs) as client:
                with self.assertRaises(Error) as e:
                    client.health(timeout=5)
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
            for hint in hints:
                self.assertIn(hint, e.exception.message)
        # A server certificate the client does not trust (signed by a CA it
        # was not given) fails the handshake on the client's side.
        with Client(server.target, tls_ca=path("rogue-ca.pem"), tls_cert=path("client.pem"),
                    tls_key=path("client.key")) as client:
            with self.assertRaises(Error) as e:
                client.health(timeout=5)
        self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertIn("TLS handshake failed (check tls_ca, tls_server_name", e.exception.message)
        # The same certificate the server trusts is served, and a plaintext
        # channel's failure is left as gRPC says it.
        with Client(server.target, tls_ca=path("ca.pem"), tls_cert=path("client.pem"),
                    tls_key=path("client.key")) as client:
            self.assertEqual(client.health(), "SERVING")
        with Client(server.target) as client:
            with self.assertRaises(Error) as e:
                client.health(timeout=5)
        self.assertNotIn("TLS", e.exception.message)
        # A connection reset in the middle of a call (a replica dying) is no
        # handshake: only a failure to connect gets the hint.
        from attention_client.client import _explain_tls_failure
        self.assertIsNone(_explain_tls_failure("Connection reset", True))
        self.assertIsNone(_explain_tls_failure("Socket closed", False))
        self.assertIn("--tls-client-ca", _explain_tls_failure(
            "failed to connect to all addresses; last error: UNAVAILABLE: "
            "ipv4:127.0.0.1:1: Socket closed", True))


class PackageTest(unittest.TestCase):
    def test_imports_with_python_path_alone(self):
        env = {"PATH": os.environ.get("PATH", ""),
               "PYTHONPATH": os.path.join(SOURCE_DIR, "client", "python")}
        subprocess.run([os.sys.executable, "-c", "import attention_client; "
                        "attention_client.Client('127.0.0.1:1').close()"],
                       env=env, check=True, cwd=tempfile.gettempdir())


if __name__ == "__main__":
    unittest.main()
