"""The Open Inference Protocol (KServe v2 gRPC) against a real attention-server, from a
grpcio client generated from the protocol's proto (proto/inference): ModelInfer equal to
PyTorch's fixtures (every fixture a model or the built-in model can take: self- and
cross-attention, masks, grouped-query heads, scale, weights averaged and per head), raw and
typed contents, FP16 and BF16 in and out, weights requested or not, ModelStreamInfer with a
refused request in the middle, statistics counting exactly the calls made, metadata,
configuration, readiness and the repository index, errors naming the input, TLS and tokens;
and the proto's names and numbers against the protocol's."""

import os
import shutil
import subprocess
import tempfile
import unittest

import grpc
import numpy as np

import attention_client
from attention_client import Client
from attention_client._proto import grpc_service_pb2 as pb
from attention_client._proto import grpc_service_pb2_grpc as pb_grpc
from attention_client._proto import model_config_pb2 as config_pb
from util import MODEL_FLAGS, SOURCE_DIR, Server, assert_close, fixtures

FIXTURES = fixtures()


def setUpModule():
    global SERVER
    SERVER = Server(MODEL_FLAGS)


def tearDownModule():
    SERVER.stop()


def add_input(request, name, array, datatype=None, typed=False):
    """Appends input `name` (raw bytes, or typed contents)."""
    array = np.asarray(array)
    if datatype is None:
        datatype = "BOOL" if array.dtype == bool else "FP32"
    t = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if typed and datatype == "BOOL":
        t.contents.bool_contents.extend(array.ravel().tolist())
    elif typed:
        t.contents.fp32_contents.extend(array.astype(np.float32).ravel().tolist())
    elif datatype == "BOOL":
        request.raw_input_contents.append(array.astype(np.uint8).tobytes())
    elif datatype == "FP16":
        request.raw_input_contents.append(array.astype("<f2").tobytes())
    elif datatype == "BF16":
        bits = attention_client.float32_to_bfloat16_bits(array.astype(np.float32))
        request.raw_input_contents.append(bits.astype("<u2").tobytes())
    else:
        request.raw_input_contents.append(array.astype("<f4").tobytes())


def outputs_of(response):
    """{name: numpy array} of a ModelInferResponse."""
    self_check = len(response.raw_output_contents) == len(response.outputs)
    assert self_check, "one raw_output_contents per output"
    result = {}
    for out, raw in zip(response.outputs, response.raw_output_contents):
        if out.datatype == "FP16":
            a = np.frombuffer(raw, "<f2").astype(np.float32)
        elif out.datatype == "BF16":
            a = attention_client.bfloat16_bits_to_float32(np.frombuffer(raw, "<u2"))
        else:
            a = np.frombuffer(raw, "<f4")
        result[out.name] = a.reshape(tuple(out.shape))
    return result


def infer_request(f, typed=False, request_outputs=True):
    """Fixture `f` as a ModelInferRequest: its model, or the built-in one."""
    r = pb.ModelInferRequest(id=f.name)
    o = f.options
    if "model" in o:
        r.model_name = o["model"]
    else:
        r.model_name = "attention"
        r.parameters["num_heads"].int64_param = o["heads"]
        if o["kv_heads"]:
            r.parameters["num_kv_heads"].int64_param = o["kv_heads"]
    if f.kind == "self_attention" and "model" in o:
        add_input(r, "query", f.inputs["input"], typed=typed)
    elif f.kind == "self_attention":  # the built-in model takes all three
        for name in ("query", "key", "value"):
            add_input(r, name, f.inputs["input"], typed=typed)
    else:
        for name in ("query", "key", "value"):
            add_input(r, name, f.inputs[name], typed=typed)
    for mask in ("attn_mask", "key_padding_mask"):
        if mask in o:
            add_input(r, mask, o[mask], typed=typed)
    if o["causal"]:
        r.parameters["causal"].bool_param = True
    if "scale" in o:
        r.parameters["scale"].double_param = o["scale"]
    if o["weights"] != "none":
        r.parameters["weights"].string_param = o["weights"]
        if request_outputs:
            r.outputs.add(name="output")
            r.outputs.add(name="weights")
    return r


def servable(f):
    """A fixture the protocol can carry: a loaded model's, or plain attention."""
    return "projection" not in f.options


class InferenceTest(unittest.TestCase):
    def setUp(self):
        self.channel = grpc.insecure_channel(SERVER.target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def tearDown(self):
        self.channel.close()

    def check(self, f, response):
        got = outputs_of(response)
        self.assertEqual(response.id, f.name)
        assert_close(self, got["output"], f.expected_output, 1e-4)
        if f.expected_weights is None:
            self.assertNotIn("weights", got)
        else:
            assert_close(self, got["weights"], f.expected_weights, 1e-4, "weights")

    def test_every_servable_fixture_equals_pytorch(self):
        cases = [f for f in FIXTURES if servable(f)]
        self.assertGreaterEqual(len(cases), 15)
        for i, f in enumerate(cases):
            with self.subTest(fixture=f.name):
                # Raw bytes, and typed contents for every other fixture;
                # weights by the parameter alone (outputs unnamed) or named.
                self.check(f, self.stub.ModelInfer(infer_request(f, typed=i % 2 == 1,
                                                                 request_outputs=i % 3 != 0)))

    def test_equals_attention_v1(self):
        f = next(f for f in FIXTURES if f.name == "e2e_demo_self_avg")
        with Client(SERVER.target) as client:
            want, want_w = f.call(client)
        got = outputs_of(self.stub.ModelInfer(infer_request(f)))
        np.testing.assert_array_equal(got["output"], want)
        np.testing.assert_array_equal(got["weights"], want_w)

    def test_weights_only_when_asked(self):
        f = next(f for f in FIXTURES if f.name == "e2e_demo_self_avg")
        r = infer_request(f)
        del r.outputs[:]
        del r.parameters["weights"]
        self.assertEqual(list(outputs_of(self.stub.ModelInfer(r))), ["output"])
        r.outputs.add(name="weights")  # the weights alone: averaged
        got = outputs_of(self.stub.ModelInfer(r))
        self.assertEqual(list(got), ["weights"])
        assert_close(self, got["weights"], f.expected_weights, 1e-4, "weights")
        r.parameters["weights"].string_param = "per-head"
        self.assertEqual(outputs_of(self.stub.ModelInfer(r))["weights"].shape, (2, 4, 10, 10))

    def test_half_precision_in_and_out(self):
        x = np.random.RandomState(1).randn(2, 6, 64).astype(np.float32)
        with Client(SERVER.target) as client:
            for datatype, wire, tolerance in (("FP16", "float16", 1e-2), ("BF16", "bfloat16", 4e-2)):
                with self.subTest(datatype=datatype):
                    r = pb.ModelInferRequest(model_name="demo")
                    add_input(r, "query", x, datatype)
                    response = self.stub.ModelInfer(r)
                    self.assertEqual(response.outputs[0].datatype, datatype)
                    want, _ = client.self_attention(x, model="demo", wire_dtype=wire)
                    assert_close(self, outputs_of(response)["output"], want.astype(np.float32),
                                 tolerance)
                    r.parameters["precision"].string_param = "bfloat16"
                    exact, _ = client.self_attention(x, model="demo")
                    assert_close(self, outputs_of(self.stub.ModelInfer(r))["output"], exact, 5e-2)

    def test_stream_goes_on_past_a_refused_request(self):
        good = [f for f in FIXTURES if servable(f)][:4]
        requests = [infer_request(f) for f in good]
        bad = pb.ModelInferRequest(model_name="demo", id="bad")
        add_input(bad, "query", np.zeros((1, 3, 32), np.float32))  # demo's E is 64
        requests.insert(2, bad)
        responses = list(self.stub.ModelStreamInfer(iter(requests)))
        self.assertEqual([r.infer_response.id for r in responses], [r.id for r in requests])
        self.assertIn("INVALID_ARGUMENT: query: last dim 32", responses[2].error_message)
        for f, response in zip(good, responses[:2] + responses[3:]):
            self.assertEqual(response.error_message, "")
            self.check(f, response.infer_response)

    def test_errors_name_the_input(self):
        x = np.zeros((2, 4, 64), np.float32)
        cases = []
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "quary", x)
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "input 'quary': unknown"))
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "key", x)
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "query: missing"))
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "query", x, "INT32")
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "query: datatype 'INT32'"))
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "query", x)
        add_input(r, "key", np.zeros((3, 7, 64), np.float32))
        add_input(r, "value", np.zeros((3, 7, 64), np.float32))
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "key: shape [3,7,64]"))
        r = pb.ModelInferRequest(model_name="demo")
        r.inputs.add(name="query", datatype="FP32", shape=[2, 4, 64])
        r.raw_input_contents.append(b"\0" * 12)
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "query: data has 12 bytes"))
        r = pb.ModelInferRequest(model_name="nope")
        cases.append((r, grpc.StatusCode.NOT_FOUND, "model_name: no model 'nope'"))
        r = pb.ModelInferRequest(model_name="demo", model_version="2")
        add_input(r, "query", x)
        cases.append((r, grpc.StatusCode.NOT_FOUND, "model_version: '2'"))
        r = pb.ModelInferRequest(model_name="attention")
        add_input(r, "query", x)
        add_input(r, "key", x)
        add_input(r, "value", x)
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "parameter num_heads: required"))
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "query", x)
        r.parameters["causal"].string_param = "yes"
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "parameter causal: expected a bool"))
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "query", x)
        r.parameters["sequence_id"].int64_param = 3
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "parameter sequence_id: unknown"))
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "query", x)
        r.outputs.add(name="logits")
        cases.append((r, grpc.StatusCode.INVALID_ARGUMENT, "output 'logits': unknown"))
        for request, code, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(grpc.RpcError) as e:
                    self.stub.ModelInfer(request)
                self.assertEqual(e.exception.code(), code, e.exception.details())
                self.assertIn(message, e.exception.details())

    def test_metadata_configuration_readiness_and_index(self):
        self.assertTrue(self.stub.ServerLive(pb.ServerLiveRequest()).live)
        self.assertTrue(self.stub.ServerReady(pb.ServerReadyRequest()).ready)
        meta = self.stub.ServerMetadata(pb.ServerMetadataRequest())
        self.assertEqual(meta.name, "attention-server")
        self.assertIn("statistics", meta.extensions)
        self.assertTrue(self.stub.ModelReady(pb.ModelReadyRequest(name="demo")).ready)
        self.assertTrue(self.stub.ModelReady(pb.ModelReadyRequest(name="attention",
                                                                  version="1")).ready)
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.ModelReady(pb.ModelReadyRequest(name="demo", version="7"))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        m = self.stub.ModelMetadata(pb.ModelMetadataRequest(name="mha_e32_h2_kv"))
        self.assertEqual(m.versions, ["1"])
        shapes = {t.name: (t.datatype, list(t.shape)) for t in m.inputs}
        self.assertEqual(shapes["query"], ("FP32", [-1, -1, 32]))
        self.assertEqual(shapes["key"], ("FP32", [-1, -1, 24]))
        self.assertEqual(shapes["value"], ("FP32", [-1, -1, 16]))
        self.assertEqual([t.name for t in m.outputs], ["output", "weights"])
        c = self.stub.ModelConfig(pb.ModelConfigRequest(name="demo")).config
        self.assertEqual((c.name, c.max_batch_size), ("demo", 0))
        self.assertEqual(c.input[0].data_type, config_pb.TYPE_FP32)
        self.assertEqual(list(c.input[0].dims), [-1, -1, 64])
        self.assertTrue(c.input[1].optional)
        self.assertFalse(c.HasField("dynamic_batching"))  # this server batches nothing
        index = self.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        self.assertEqual(sorted(m.name for m in index.models),
                         ["attention", "demo", "mha_e32_h2_kv", "mha_e32_h4"])
        self.assertTrue(all(m.state == "READY" for m in index.models))


class StatisticsTest(unittest.TestCase):
    def test_statistics_count_exactly_the_calls_made(self):
        server = Server([*MODEL_FLAGS, "--batch-delay-us", "500"])
        self.addCleanup(server.stop)
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            c = stub.ModelConfig(pb.ModelConfigRequest(name="demo")).config
            self.assertEqual(c.dynamic_batching.max_queue_delay_microseconds, 500)
            ok = pb.ModelInferRequest(model_name="demo")
            add_input(ok, "query", np.ones((3, 4, 64), np.float32))
            bad = pb.ModelInferRequest(model_name="demo")
            add_input(bad, "query", np.ones((3, 4, 32), np.float32))
            for _ in range(5):
                stub.ModelInfer(ok)
            for _ in range(2):
                with self.assertRaises(grpc.RpcError):
                    stub.ModelInfer(bad)
            list(stub.ModelStreamInfer(iter([ok, bad, ok])))
            stats = {s.name: s for s in
                     stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats}
            demo = stats["demo"]
            self.assertEqual(demo.execution_count, 7)
            self.assertEqual(demo.inference_count, 21)  # a batch of 3 each
            self.assertEqual(demo.inference_stats.success.count, 7)
            self.assertEqual(demo.inference_stats.fail.count, 3)
            self.assertEqual(demo.inference_stats.compute_infer.count, 7)
            self.assertGreater(demo.inference_stats.compute_infer.ns, 0)
            self.assertGreater(demo.last_inference, 1_600_000_000_000)
            self.assertEqual(stats["attention"].execution_count, 0)
            with self.assertRaises(grpc.RpcError) as e:
                stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)


class RepositoryTest(unittest.TestCase):
    """--model-dir through the protocol: versions as the registry counts them, and
    RepositoryModelLoad / RepositoryModelUnload."""

    def test_versions_load_and_unload(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)

        def put(source):  # written beside, renamed into place
            shutil.copy(os.path.join(SOURCE_DIR, source), os.path.join(tmp, ".m.tmp"))
            os.rename(os.path.join(tmp, ".m.tmp"), os.path.join(tmp, "m.safetensors"))

        put("models/demo.safetensors")
        server = Server(["--model-dir", tmp, "--model-poll-seconds", "0"])
        self.addCleanup(server.stop)
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = {m.name: m.version for m in
                     stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            self.assertEqual(index["m"], "1")
            put("tests/fixtures/models/mha_e32_h4.safetensors")  # another model, E = 32
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"))
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="m"))
            self.assertEqual(list(meta.versions), ["2"])
            self.assertEqual(list(meta.inputs[0].shape), [-1, -1, 32])
            self.assertTrue(stub.ModelReady(pb.ModelReadyRequest(name="m", version="2")).ready)
            with self.assertRaises(grpc.RpcError) as e:
                stub.ModelReady(pb.ModelReadyRequest(name="m", version="1"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            r = pb.ModelInferRequest(model_name="m")
            add_input(r, "query", np.ones((1, 3, 32), np.float32))
            self.assertEqual(stub.ModelInfer(r).model_version, "2")
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="m"))
            with self.assertRaises(grpc.RpcError) as e:
                stub.ModelInfer(r)
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            with self.assertRaises(grpc.RpcError) as e:  # unloaded already
                stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="m"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"))
            self.assertEqual(stub.ModelInfer(r).model_version, "3")
            with self.assertRaises(grpc.RpcError) as e:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="zz"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            with open(os.path.join(tmp, "m.safetensors"), "r+b") as f:  # broken in place
                f.truncate(100)
            with self.assertRaises(grpc.RpcError) as e:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"))
            self.assertIn("version 3 keeps serving", e.exception.details())
            self.assertEqual(stub.ModelInfer(r).model_version, "3")
        with grpc.insecure_channel(SERVER.target) as channel:  # no --model-dir
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with self.assertRaises(grpc.RpcError) as e:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="demo"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)


class ProtocolTest(unittest.TestCase):
    def test_names_and_numbers_are_the_protocols(self):
        """Field numbers of the published protocol (the KServe specification's and
        Triton's grpc_service.proto): a client's stubs read ours only if they match."""
        expected = {
            pb.ModelInferRequest: {"model_name": 1, "model_version": 2, "id": 3,
                                   "parameters": 4, "inputs": 5, "outputs": 6,
                                   "raw_input_contents": 7},
            pb.ModelInferRequest.InferInputTensor: {"name": 1, "datatype": 2, "shape": 3,
                                                    "parameters": 4, "contents": 5},
            pb.ModelInferResponse: {"model_name": 1, "model_version": 2, "id": 3,
                                    "parameters": 4, "outputs": 5, "raw_output_contents": 6},
            pb.InferParameter: {"bool_param": 1, "int64_param": 2, "string_param": 3,
                                "double_param": 4, "uint64_param": 5},
            pb.InferTensorContents: {"bool_contents": 1, "int_contents": 2,
                                     "int64_contents": 3, "uint_contents": 4,
                                     "uint64_contents": 5, "fp32_contents": 6,
                                     "fp64_contents": 7, "bytes_contents": 8},
            pb.ModelStreamInferResponse: {"error_message": 1, "infer_response": 2},
            pb.ModelMetadataResponse: {"name": 1, "versions": 2, "platform": 3, "inputs": 4,
                                       "outputs": 5},
            pb.ModelStatistics: {"name": 1, "version": 2, "last_inference": 3,
                                 "inference_count": 4, "execution_count": 5,
                                 "inference_stats": 6},
            pb.InferStatistics: {"success": 1, "fail": 2, "queue": 3, "compute_input": 4,
                                 "compute_infer": 5, "compute_output": 6},
            config_pb.ModelConfig: {"name": 1, "platform": 2, "max_batch_size": 4, "input": 5,
                                    "output": 6, "dynamic_batching": 11, "backend": 17},
        }
        for message, fields in expected.items():
            for name, number in fields.items():
                self.assertEqual(message.DESCRIPTOR.fields_by_name[name].number, number,
                                 f"{message.DESCRIPTOR.full_name}.{name}")
        self.assertEqual(pb.DESCRIPTOR.package, "inference")
        methods = [m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
        self.assertEqual(methods[:7], ["ServerLive", "ServerReady", "ModelReady",
                                       "ServerMetadata", "ModelMetadata", "ModelInfer",
                                       "ModelStreamInfer"])


class SecurityTest(unittest.TestCase):
    def test_tls_and_tokens_apply(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        subprocess.run(["bash", os.path.join(SOURCE_DIR, "scripts", "make-certs.sh"), tmp],
                       check=True, capture_output=True)
        path = lambda n: os.path.join(tmp, n)  # noqa: E731
        with open(path("tokens"), "w") as f:
            f.write("infer-token\n")
        server = Server([*MODEL_FLAGS, "--tls-cert", path("server.pem"), "--tls-key",
                         path("server.key"), "--auth-token-file", path("tokens")])
        self.addCleanup(server.stop)
        with open(path("ca.pem"), "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        host = server.target.replace("127.0.0.1", "localhost")
        r = pb.ModelInferRequest(model_name="demo")
        add_input(r, "query", np.ones((1, 2, 64), np.float32))
        with grpc.secure_channel(host, credentials) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            response = stub.ModelInfer(r, metadata=(("authorization", "Bearer infer-token"),))
            self.assertEqual(outputs_of(response)["output"].shape, (1, 2, 64))
            for call in (lambda: stub.ModelInfer(r),
                         lambda: stub.ServerReady(pb.ServerReadyRequest()),
                         lambda: stub.RepositoryModelLoad(
                             pb.RepositoryModelLoadRequest(model_name="demo"))):
                with self.assertRaises(grpc.RpcError) as e:
                    call()
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)


if __name__ == "__main__":
    unittest.main()
