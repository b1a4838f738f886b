"""The Attention Service's Python client: numpy (or torch) in, numpy out.

Example
-------
>>> import numpy as np
>>> from attention_client import Client
>>> client = Client("localhost:50051")
>>> x = np.random.randn(2, 10, 64).astype(np.float32)
>>> out, weights = client.self_attention(x, model="demo", weights="average")
>>> out.shape, weights.shape
((2, 10, 64), (2, 10, 10))

Every call is a pure function of its request, so a call that failed with
UNAVAILABLE may be sent again (``retries``). A Client is thread-safe: several
threads may call it at once over its one channel.
"""

import collections
import os
import random
import threading
import time

import grpc

from ._messages import (PRECISIONS, Error, _attention_request, _error_from_rpc,  # noqa: F401
                        _explain_tls_failure, _result, _self_attention_request)
from ._proto import attention_pb2 as pb
from ._proto import attention_pb2_grpc as pb_grpc
from ._proto import health_pb2
from ._proto import health_pb2_grpc

def _read(path):
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class _Deadline:
    """What is left of an overall timeout (None: no deadline)."""

    def __init__(self, timeout):
        self._end = None if timeout is None else time.monotonic() + float(timeout)

    def remaining(self):
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise Error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a retry")
        return left


class _StreamFeed:
    """The request side of a stream that may be retried.

    Pulls the caller's requests lazily (from gRPC's sending thread), builds
    each message, and keeps the messages sent and not yet answered so that a
    new attempt sends them again, in order, before pulling more. A request
    that cannot be built (a bad argument) ends the stream's sending side; the
    exception is kept in ``failure`` and raised after the answers before it.
    """

    def __init__(self, requests, build):
        self._requests = iter(requests)
        self._build = build
        self._state = threading.Lock()  # guards everything below
        self._pull = threading.Lock()   # one thread at a time in the caller's iterator
        self._pending = collections.deque()  # sent, unanswered; _base is the first's number
        self._base = 0
        self._generation = 0
        self._exhausted = False
        self.failure = None

    def attempt(self):
        """A fresh message iterator for a new call; older ones stop."""
        with self._state:
            self._generation += 1
            return self._messages(self._generation)

    def answered(self):
        with self._state:
            self._pending.popleft()
            self._base += 1

    def _next_pending(self, n):
        if n < self._base + len(self._pending):
            return self._pending[n - self._base]
        return None

    def _messages(self, generation):
        with self._state:
            n = self._base
        while True:
            with self._state:
                if generation != self._generation:
                    return
                message = self._next_pending(n)
            if message is None:
                with self._pull:
                    with self._state:  # another attempt may have pulled while we waited
                        if generation != self._generation:
                            return
                        message = self._next_pending(n)
                        if message is None and (self._exhausted or self.failure is not None):
                            return
                    if message is None:
                        message = self._pull_one()
                        if message is None:
                            return
            n += 1
            yield message

    def _pull_one(self):
        try:
            item = next(self._requests)
            if not isinstance(item, dict):
                raise TypeError(f"stream requests are dicts of the call's arguments, "
                                f"got {type(item).__name__}")
            if "timeout" in item:
                raise TypeError("a stream message has no timeout of its own: give the "
                                "stream's timeout= instead")
            with self._state:
                number = self._base + len(self._pending)
            message = self._build(**{"id": str(number), **item})
        except StopIteration:
            with self._state:
                self._exhausted = True
            return None
        except Exception as e:  # raised to the caller after the answers before it
            with self._state:
                self.failure = e
            return None
        with self._state:
            self._pending.append(message)
        return message


class Client:
    """A connection to an Attention Service.

    Parameters
    ----------
    target : str
        ``host:port`` (or any gRPC target, e.g. ``unix:/path``).
    tls : bool, optional
        Use TLS, verifying the server against the system's roots (or
        ``tls_ca``). Implied by ``tls_ca``, ``tls_cert`` and ``tls_key``.
    token : str, optional
        Sent as ``authorization: Bearer TOKEN`` on every call; needs TLS (a
        token in plaintext can be read by anyone on the path: ValueError).
        Default: the environment variable ``ATTENTION_TOKEN``, on TLS channels
        only.
    retries : int, optional
        Send a call that failed with UNAVAILABLE again, up to this many more
        times, with exponential backoff (0.1 s doubling to 1 s). Safe: every
        call is a pure function of its request. A stream that fails resends
        the messages that were not answered yet.
    tls_ca : str, optional
        PEM file of the CA that signs the server's certificate.
    tls_cert, tls_key : str, optional
        PEM files of a client certificate and its key (mutual TLS).
    tls_server_name : str, optional
        The name to verify in the server's certificate instead of the
        target's host.
    max_message_mb : int, optional
        Largest message received; default no limit of the client's own (the
        server bounds its responses with ``--max-message-mb``).

    Notes
    -----
    Use as a context manager, or call ``close()``, to release the channel.
    """

    def __init__(self, target, tls=False, token=None, retries=0, *, tls_ca=None,
                 tls_cert=None, tls_key=None, tls_server_name=None, max_message_mb=None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together (mutual TLS)")
        limit = -1 if max_message_mb is None else int(max_message_mb) * (1 << 20)
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            # Each channel its own connections, so that a retry's new channel
            # connects at once instead of inheriting a failed one's backoff.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        secure = bool(tls or tls_ca or tls_cert)
        if token is not None and not secure:
            raise ValueError("token needs TLS (tls=True or tls_ca=...): a token sent in "
                             "plaintext can be read by anyone on the path")
        if secure:
            credentials = grpc.ssl_channel_credentials(root_certificates=_read(tls_ca),
                                                       private_key=_read(tls_key),
                                                       certificate_chain=_read(tls_cert))
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._new_channel = lambda: grpc.secure_channel(target, credentials, options)
        else:
            self._new_channel = lambda: grpc.insecure_channel(target, options)
        self._tls = bool(tls_cert) if secure else None  # what a failed call's Error explains
        if token is None and secure:
            token = os.environ.get("ATTENTION_TOKEN")
        self._metadata = (("authorization", "Bearer " + token),) if token else None
        self._retries = int(retries)
        self._lock = threading.Lock()
        self._retired = collections.deque()  # replaced channels, closed later (calls may remain)
        self._connect()

    def _connect(self):
        channel = self._new_channel()
        self._channel = channel
        self._stubs = (pb_grpc.AttentionServiceStub(channel), health_pb2_grpc.HealthStub(channel))

    def _reconnect(self, stubs):
        """Replace the channel whose call failed with UNAVAILABLE, unless another
        thread already has. gRPC backs off reconnecting a failed channel for up
        to two minutes: a retry on it would fail at once, a new one connects."""
        with self._lock:
            if self._stubs is not stubs:
                return
            self._retired.append(self._channel)
            if len(self._retired) > 8:  # the oldest's calls have long ended
                self._retired.popleft().close()
            self._connect()

    def close(self):
        """Close the channel; calls in progress are cancelled."""
        with self._lock:
            for channel in (*self._retired, self._channel):
                channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _retry(self, error, attempt, stubs):
        """Raise `error` as an Error unless it may be retried; else back off and
        reconnect."""
        if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self._retries:
            raise _error_from_rpc(error, self._tls) from None
        self._retry_pause(attempt)
        self._reconnect(stubs)

    @staticmethod
    def _retry_pause(attempt):
        """The backoff before retry number `attempt` (0 the first)."""
        time.sleep(min(0.1 * 2 ** attempt, 1.0) * random.uniform(0.75, 1.0))

    def _unary(self, service, method, request, timeout):
        deadline = _Deadline(timeout)
        attempt = 0
        while True:
            stubs = self._stubs
            try:
                return getattr(stubs[service], method)(request, timeout=deadline.remaining(),
                                                       metadata=self._metadata)
            except grpc.RpcError as e:
                self._retry(e, attempt, stubs)
            attempt += 1

    def _stream(self, method, requests, build, timeout):
        feed = _StreamFeed(requests, build)
        deadline = _Deadline(timeout)
        attempt = 0
        while True:
            stubs = self._stubs
            call = getattr(stubs[0], method)(feed.attempt(), timeout=deadline.remaining(),
                                            metadata=self._metadata)
            try:
                for response in call:
                    feed.answered()
                    yield _result(response)
                break
            except grpc.RpcError as e:
                self._retry(e, attempt, stubs)
            finally:
                call.cancel()  # a no-op once finished; stops the call if the caller stops early
            attempt += 1
        if feed.failure is not None:
            raise feed.failure

    def attention(self, query, key, value, *, timeout=None, **options):
        """Multi-head attention, as ``nn.MultiheadAttention(batch_first=True)``
        or ``scaled_dot_product_attention`` computes it.

        Parameters
        ----------
        query, key, value : numpy.ndarray or torch.Tensor
            Any real dtype, contiguous or not. ``[B, L, E]``, ``[B, S, kdim]``,
            ``[B, S, vdim]`` (or unbatched without B); rank 4 ``[B, H, L, D]``
            inputs are already split into heads.
        heads : int, optional
            Query heads H (required without a model; with one 0 means its own).
        kv_heads : int, optional
            Key/value heads for grouped-query attention (0: as many as ``heads``).
        scale : float, optional
            Multiplies Q K^T; default ``1/sqrt(head_dim)``.
        causal : bool, optional
            Query position i attends key positions j <= i.
        attn_mask : array, optional
            ``[L, S]``, ``[B*H, L, S]`` or rank 4 broadcastable to
            ``[B, H, L, S]``. Bool (True = may not attend) or float (added).
        key_padding_mask : array, optional
            ``[B, S]``. Bool (True = ignore this key) or float (added).
        model : str, optional
            A model the server preloaded (see ``models()``): the full
            ``nn.MultiheadAttention`` forward with its weights.
        projection : mapping or nn.MultiheadAttention, optional
            Inline weights: ``nn.MultiheadAttention.state_dict()`` tensors by
            their names (or the module itself, which also gives ``heads``).
        weights : {"none", "average", "per-head"}, optional
            Attention weights to return: ``[B, L, S]`` or ``[B, H, L, S]``.
        wire_dtype : {"float32", "float16", "bfloat16"}, optional
            Dtype of query, key and value on the wire; default float16 for
            float16 inputs, bfloat16 for torch bfloat16, float32 otherwise.
            Compute is float32 either way.
        precision : {"float32", "bfloat16"}, optional
            Precision of the matrix products: bfloat16 inputs with float32
            accumulation, softmax in float32 (PyTorch bfloat16 accuracy). A
            server whose CPU lacks bfloat16 instructions computes in float32.
        timeout : float, optional
            Seconds for the call, retries included.
        id : str, optional
            Echoed by the server (useful in its access log).

        Returns
        -------
        output : numpy.ndarray
            float16 when the output came back as float16, float32 otherwise.
        weights : numpy.ndarray or None
            float32; None when not asked for.

        Raises
        ------
        Error
            The call failed: ``.code`` (``grpc.StatusCode``) and ``.message``.
        ValueError, TypeError
            An argument cannot be sent (unknown option value, non-numeric data).
        """
        request = _attention_request(query, key, value, **options)
        return _result(self._unary(0, "Attention", request, timeout))

    def self_attention(self, input, *, timeout=None, **options):
        """Multi-head self-attention: ``attention(input, input, input)``,
        sending ``input`` once.

        Parameters
        ----------
        input : numpy.ndarray or torch.Tensor
            ``[B, L, E]`` (or ``[L, E]``, or ``[B, H, L, D]``).
        **options
            As for ``attention``.

        Returns
        -------
        output, weights : numpy.ndarray, numpy.ndarray or None
            As for ``attention``.

        Raises
        ------
        Error, ValueError, TypeError
            As for ``attention``.
        """
        request = _self_attention_request(input, **options)
        return _result(self._unary(0, "SelfAttention", request, timeout))

    def stream_attention(self, requests, *, timeout=None):
        """Many attention calls over one bidirectional stream.

        Parameters
        ----------
        requests : iterable of dict
            Each a dict of ``attention``'s arguments, e.g.
            ``{"query": q, "key": k, "value": v, "heads": 8}`` (no ``timeout``).
            Pulled lazily, while earlier answers arrive.
        timeout : float, optional
            Seconds for the whole stream.

        Yields
        ------
        (output, weights) or Error
            In request order: a tuple as ``attention`` returns it, or an
            ``Error`` instance (not raised) for a message the server refused;
            the stream goes on.

        Raises
        ------
        Error
            The stream itself failed (e.g. DEADLINE_EXCEEDED, or UNAVAILABLE
            after the retries).
        ValueError, TypeError
            A request could not be built; raised after the answers to the
            requests before it.
        """
        return self._stream("StreamAttention", requests, _attention_request, timeout)

    def stream_self_attention(self, requests, *, timeout=None):
        """Many self-attention calls over one stream; ``requests`` are dicts of
        ``self_attention``'s arguments (``{"input": x, "model": "m"}``).
        Otherwise as ``stream_attention``."""
        return self._stream("StreamSelfAttention", requests, _self_attention_request,
                            timeout)

    def decoder(self, model="", heads=0, kv_heads=0, precision="float32", *, scale=None,
                retries=None, timeout=None, wire_dtype=None):
        """A ``StreamDecode`` stream for incremental decoding: the server keeps
        each sequence's keys and values while the stream is open, so a step
        sends only its new tokens.

        Parameters
        ----------
        model : str, optional
            A model the server preloaded (its projections); else plain
            attention with ``heads`` (and ``kv_heads``).
        heads, kv_heads : int, optional
            Query heads and key/value heads (0: the model's).
        precision : {"float32", "bfloat16"}, optional
            ``"bfloat16"`` keeps the keys and values in bfloat16 on the server.
        scale : float, optional
            Score scale (default 1/sqrt(head dim)).
        retries : int, optional
            Survive a broken stream this many times per message (default the
            client's ``retries``): the stream is reopened, each held sequence
            rebuilt from the tokens sent, the pending message sent again.
        timeout : float, optional
            Seconds the stream may stay open (default none).
        wire_dtype : {"float32", "float16", "bfloat16"}, optional
            Dtype of tensors on the wire (default: each input's own).

        Returns
        -------
        attention_client.Decoder
            ``append(sequence, input=None, query=None, key=None, value=None,
            causal=True, weights="none") -> (output, weights)``,
            ``end(sequence)``, ``close()``; a context manager.
        """
        from .decoder import Decoder

        return Decoder(self, model=model, heads=heads, kv_heads=kv_heads, precision=precision,
                       scale=scale, retries=retries, timeout=timeout, wire_dtype=wire_dtype)

    def _list_models(self, timeout):
        return self._unary(0, "ListModels", pb.ListModelsRequest(), timeout)

    def models(self, *, timeout=10.0):
        """The models the server preloaded.

        Returns
        -------
        list of dict
            One per model: ``name``, ``embed_dim``, ``num_heads``, ``kdim``,
            ``vdim``, ``bias``.
        """
        return [{"name": m.name, "embed_dim": m.embed_dim, "num_heads": m.num_heads,
                 "kdim": m.kdim, "vdim": m.vdim, "bias": m.bias}
                for m in self._list_models(timeout).models]

    def server_limits(self, *, timeout=10.0):
        """The server's limits, to size requests: a dict with
        ``max_message_bytes``, ``max_request_memory_bytes``,
        ``compute_threads``, ``max_queue``, ``max_stream_in_flight``."""
        limits = self._list_models(timeout).limits
        return {f.name: getattr(limits, f.name) for f in limits.DESCRIPTOR.fields}

    def health(self, service="", *, timeout=5.0):
        """The server's health (``grpc.health.v1.Health/Check``).

        Returns
        -------
        str
            ``"SERVING"``, or ``"NOT_SERVING"`` while the server drains.
        """
        response = self._unary(1, "Check",
                               health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
