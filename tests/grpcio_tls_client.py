"""Calls attention-server with Python's grpcio over mutual TLS with a bearer token.

usage: grpcio_tls_client.py TARGET CERT_DIR TOKEN
CERT_DIR as scripts/make-certs.sh makes it. Prints one line per attempt; exits 1
when an attempt does not end as expected. Only python3-grpcio is needed: the
calls send raw bytes (an empty ListModelsRequest is zero bytes).
"""
import sys

import grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def attempt(target, creds, metadata):
    channel = grpc.secure_channel(target, creds)
    call = channel.unary_unary("/attention.v1.AttentionService/ListModels",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    try:
        call(b"", metadata=metadata, timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        channel.close()


def main():
    target, cert_dir, token = sys.argv[1:4]
    ca = read(f"{cert_dir}/ca.pem")
    mtls = grpc.ssl_channel_credentials(root_certificates=ca,
                                        private_key=read(f"{cert_dir}/client.key"),
                                        certificate_chain=read(f"{cert_dir}/client.pem"))
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
    results = [
        ("with token", attempt(target, mtls, [("authorization", f"Bearer {token}")]), "OK"),
        ("without token", attempt(target, mtls, None), "UNAUTHENTICATED"),
        ("without client certificate",
         attempt(target, anonymous, [("authorization", f"Bearer {token}")]), "UNAVAILABLE"),
    ]
    ok = True
    for name, got, want in results:
        print(f"{name}: {got}")
        ok = ok and got == want
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
