#!/usr/bin/python3
"""Calls the Attention Service over the Open Inference Protocol (KServe v2 gRPC) as a
Triton or KServe user would: with stubs generated from the protocol's proto (here the
build's, from proto/inference/grpc_service.proto, in attention_client._proto; stubs a
user generated from KServe's or Triton's proto, or tritonclient.grpc, send the same bytes).

    PYTHONPATH=client/python /usr/bin/python3 client/python/examples/open_inference.py [TARGET]

Prints the server's metadata, the demo model's inputs and outputs, one inference (with the
attention weights), and a stream of three requests with a refused one in the middle.
"""

import sys

import grpc
import numpy as np

from attention_client._proto import grpc_service_pb2 as pb
from attention_client._proto import grpc_service_pb2_grpc as pb_grpc


def request(x, weights=False):
    r = pb.ModelInferRequest(model_name="demo", id="example")
    r.inputs.add(name="query", datatype="FP32", shape=x.shape)  # self-attention over query
    r.raw_input_contents.append(x.astype("<f4").tobytes())
    r.parameters["causal"].bool_param = True
    if weights:
        r.outputs.add(name="output")
        r.outputs.add(name="weights")  # averaged over heads unless parameter weights=per-head
    return r


def arrays(response):
    return {o.name: np.frombuffer(raw, "<f4").reshape(tuple(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents)}


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        print("ready:", stub.ServerReady(pb.ServerReadyRequest()).ready)
        meta = stub.ServerMetadata(pb.ServerMetadataRequest())
        print(f"server: {meta.name} {meta.version}, extensions {list(meta.extensions)}")
        model = stub.ModelMetadata(pb.ModelMetadataRequest(name="demo"))
        for t in model.inputs:
            print(f"input  {t.name:17} {t.datatype:5} {list(t.shape)}")
        for t in model.outputs:
            print(f"output {t.name:17} {t.datatype:5} {list(t.shape)}")
        x = np.random.randn(2, 10, 64).astype(np.float32)
        out = arrays(stub.ModelInfer(request(x, weights=True)))
        print("ModelInfer:", {name: a.shape for name, a in out.items()})
        bad = pb.ModelInferRequest(model_name="demo", id="bad")
        bad.inputs.add(name="qeury", datatype="FP32", shape=[1])
        for answer in stub.ModelStreamInfer(iter([request(x), bad, request(x[:1])])):
            print("stream:", answer.error_message or
                  {name: a.shape for name, a in arrays(answer.infer_response).items()})


if __name__ == "__main__":
    main()
