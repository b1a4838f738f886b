"""The messages of attention.v1 as the Python client builds and reads them: the
options of a call, its requests, its results, and its errors (``Error``). Shared by
``Client`` (client.py) and ``Decoder`` (decoder.py)."""

import warnings

import grpc

from ._proto import attention_pb2 as pb
from ._tensors import check_wire_dtype, from_wire, mask_to_wire, natural_wire_dtype, to_wire

_CODES = {code.value[0]: code for code in grpc.StatusCode}

_WEIGHTS = {
    None: pb.WEIGHTS_NONE,
    "none": pb.WEIGHTS_NONE,
    "average": pb.WEIGHTS_AVERAGED,
    "averaged": pb.WEIGHTS_AVERAGED,
    "per-head": pb.WEIGHTS_PER_HEAD,
    "per_head": pb.WEIGHTS_PER_HEAD,
}

PRECISIONS = ("float32", "bfloat16")

# nn.MultiheadAttention.state_dict() names -> Projection fields.
_PROJECTION_FIELDS = {
    "in_proj_weight": "in_proj_weight",
    "q_proj_weight": "q_proj_weight",
    "k_proj_weight": "k_proj_weight",
    "v_proj_weight": "v_proj_weight",
    "in_proj_bias": "in_proj_bias",
    "out_proj.weight": "out_proj_weight",
    "out_proj.bias": "out_proj_bias",
}


class Error(Exception):
    """A call the server (or gRPC) refused.

    Attributes
    ----------
    code : grpc.StatusCode
        The status code, e.g. ``grpc.StatusCode.INVALID_ARGUMENT``.
    message : str
        The server's message; it names the field and the problem. On a TLS
        channel, a failed handshake's message also says what to check.

    ``str(error)`` is ``"CODE_NAME: message"``.
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


# What gRPC says when the server's transport cancels a call it is still
# receiving under memory pressure, and what the error adds (as the C++ client).
_QUOTA_CANCEL = "Received RST_STREAM with error code 11"
_QUOTA_CANCEL_EXPLANATION = (
    " (ENHANCE_YOUR_CALM): the server cancelled the call while receiving it; its memory for "
    "requests being received (a quarter of --max-memory-mb) was most likely full: retry later "
    "or send smaller requests")


def _explain_tls_failure(message, client_certificate):
    """What to check when a call on a TLS channel failed with UNAVAILABLE
    `message`, in the C++ client's words (client/security.h and
    client/client.cc), or None when it is no TLS failure. gRPC reports an
    untrusted or misnamed server certificate (or a port without TLS) as a
    failed handshake, but a server that refuses the client's certificate, or
    wanted one and got none, closes the connection during the handshake: that
    reads only "Socket closed" (or "Connection reset"), and only a connection
    that failed ("failed to connect") says so while connecting: a reset in the
    middle of a call (a replica dying) is no handshake."""
    m = message.lower()
    if "handshake" in m or "peer certificate" in m or "certificate verify" in m:
        return ("TLS handshake failed (check tls_ca, tls_server_name and the client "
                "certificate): " + message)
    if "failed to connect" in m and ("socket closed" in m or "connection reset" in m):
        if client_certificate:
            check = ("the server may have refused the client certificate (tls_cert must be "
                     "signed by a CA in the server's --tls-client-ca)")
        else:
            check = "the server may require a client certificate (tls_cert and tls_key)"
        return (f"the TLS connection was closed during the handshake: {check}, or it does "
                f"not serve TLS on this port ({message})")
    return None


def _error_from_rpc(e, tls=None):
    """The Error of a failed call; `tls` is None on a plaintext channel, else
    whether the channel has a client certificate."""
    message = e.details() or ""
    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith(_QUOTA_CANCEL):
        message += _QUOTA_CANCEL_EXPLANATION
    if e.code() == grpc.StatusCode.UNAVAILABLE and tls is not None:
        message = _explain_tls_failure(message, tls) or message
    return Error(e.code(), message)


# AttentionOptions.precision (absent from stubs generated from an older proto:
# then bfloat16 requests compute in float32, with a warning).
_PRECISION_FIELD = pb.AttentionOptions.DESCRIPTOR.fields_by_name.get("precision")
_warned_precision = False


def _options(heads=0, kv_heads=0, scale=None, causal=False, attn_mask=None,
             key_padding_mask=None, model="", projection=None, weights="none",
             precision="float32"):
    """AttentionOptions of the calls' keyword arguments (see Client.attention)."""
    global _warned_precision
    o = pb.AttentionOptions(num_heads=int(heads), num_kv_heads=int(kv_heads),
                            causal=bool(causal), model=model or "")
    if scale is not None:
        o.scale = float(scale)
    if attn_mask is not None:
        o.attn_mask.CopyFrom(mask_to_wire(attn_mask, "attn_mask"))
    if key_padding_mask is not None:
        o.key_padding_mask.CopyFrom(mask_to_wire(key_padding_mask, "key_padding_mask"))
    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be 'none', 'average' or 'per-head', got {weights!r}")
    o.weights = _WEIGHTS[weights]
    if projection is not None:
        if o.num_heads == 0 and hasattr(projection, "num_heads"):
            o.num_heads = int(projection.num_heads)
        state = projection.state_dict() if hasattr(projection, "state_dict") else projection
        for name, tensor in state.items():
            if name not in _PROJECTION_FIELDS:
                raise ValueError(f"projection: unknown tensor {name!r} (expected "
                                 f"nn.MultiheadAttention state_dict names: "
                                 f"{', '.join(_PROJECTION_FIELDS)})")
            if tensor is not None:
                getattr(o.projection, _PROJECTION_FIELDS[name]).CopyFrom(
                    to_wire(tensor, f"projection.{name}", natural_wire_dtype(tensor)))
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    if _PRECISION_FIELD is not None:
        value = _PRECISION_FIELD.enum_type.values_by_name["PRECISION_" + precision.upper()]
        setattr(o, _PRECISION_FIELD.name, value.number)
    elif precision != "float32" and not _warned_precision:
        _warned_precision = True
        warnings.warn("precision='bfloat16' is not in this proto yet: computing in float32",
                      stacklevel=3)
    return o


def _attention_request(query, key, value, id="", wire_dtype=None, **options):
    wire = check_wire_dtype(wire_dtype or natural_wire_dtype(query))
    return pb.AttentionRequest(id=str(id), query=to_wire(query, "query", wire),
                               key=to_wire(key, "key", wire), value=to_wire(value, "value", wire),
                               options=_options(**options))


def _self_attention_request(input, id="", wire_dtype=None, **options):
    wire = check_wire_dtype(wire_dtype or natural_wire_dtype(input))
    return pb.SelfAttentionRequest(id=str(id), input=to_wire(input, "input", wire),
                                   options=_options(**options))


def _result(response):
    """(output, weights) of a response, or an Error for a refused stream message."""
    if response.HasField("error"):
        code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
        return Error(code, response.error.message)
    weights = from_wire(response.weights) if response.HasField("weights") else None
    return from_wire(response.output), weights
