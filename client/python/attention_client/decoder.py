"""Incremental decoding over ``StreamDecode``: ``Client.decoder(...)``.

The server keeps each sequence's keys and values for the life of one stream,
so a decoding step sends only its new tokens:

>>> with client.decoder(model="demo", retries=3) as d:
...     out, _ = d.append("user-1", input=prompt)        # [P, E]: the prefill
...     for _ in range(steps):
...         out, _ = d.append("user-1", input=token)     # [1, E]: one token
...         token = next_token(out)
...     d.end("user-1")

With ``retries``, a stream that breaks (its replica killed, drained or
restarted) is opened again (on a new channel, so the balancer picks a live
replica), every sequence held is rebuilt by sending all its tokens again in
one message, and the message that was pending is sent again: ``append``
returns what it would have returned without the fault. For that the decoder
keeps, per sequence held, the tokens (or keys and values) it sent.
"""

import queue

import grpc
import numpy as np

from ._proto import attention_pb2 as pb
from ._tensors import _to_numpy, bfloat16_bits_to_float32, check_wire_dtype, natural_wire_dtype
from ._tensors import to_wire
from ._messages import Error, _error_from_rpc, _options, _result

_END = object()  # closes a stream's request side


def _rows(x, name):
    """``x`` as a numpy array of float rows ``[T, W]`` or ``[1, T, W]``."""
    array, is_bf16_bits = _to_numpy(x, name)
    if is_bf16_bits:
        array = bfloat16_bits_to_float32(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[0] != 1):
        raise ValueError(f"{name}: a decode step takes [T, W] or [1, T, W] rows, "
                         f"got shape {list(array.shape)}")
    return array


class _Kept:
    """What a sequence's messages sent: enough to rebuild it on a new stream."""

    def __init__(self, query):
        self.query = query  # the first message's queries (a rebuild needs some)
        self.input = self.key = self.value = None

    @staticmethod
    def _grow(held, rows):
        if rows is None:
            return held
        return rows.copy() if held is None else np.concatenate([held, rows], axis=-2)

    def add(self, input, key, value):
        self.input = self._grow(self.input, input)
        self.key = self._grow(self.key, key)
        self.value = self._grow(self.value, value)


class Decoder:
    """One ``StreamDecode`` stream; made by ``Client.decoder``.

    Not thread-safe: one caller appends at a time (use a decoder per thread).
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, client, model="", heads=0, kv_heads=0, precision="float32", scale=None,
                 retries=None, timeout=None, wire_dtype=None):
        self._client = client
        self._options = dict(model=model, heads=heads, kv_heads=kv_heads, precision=precision,
                             scale=scale)
        _options(**self._options)  # a bad option fails here, not at the first append
        self._retries = client._retries if retries is None else int(retries)
        self._timeout = timeout
        self._wire = None if wire_dtype is None else check_wire_dtype(wire_dtype)
        self._lengths = {}  # sequence -> keys the server holds
        self._kept = {}     # sequence -> _Kept (with retries)
        self._next_id = 0
        self._call = None
        self.retried = 0  # streams reopened after a break
        self._open()

    # The stream: requests through a queue, answers read one at a time.
    def _open(self):
        self._stubs = self._client._stubs
        self._queue = queue.SimpleQueue()
        requests = iter(self._queue.get, _END)
        self._call = self._stubs[0].StreamDecode(requests, timeout=self._timeout,
                                                 metadata=self._client._metadata)

    def _exchange(self, request):
        self._queue.put(request)
        return next(self._call)

    def _drop_stream(self):
        if self._call is not None:
            self._queue.put(_END)
            self._call.cancel()
            self._call = None

    def _request(self, sequence, position, input, query, key, value, causal, weights,
                 first):
        wire = self._wire
        tensors = [t for t in (input, query, key, value) if t is not None]
        if wire is None:
            wire = natural_wire_dtype(tensors[0]) if tensors else "float32"
        options = (_options(**self._options, causal=causal, weights=weights) if first
                   else _options(causal=causal, weights=weights))
        r = pb.DecodeRequest(id=str(self._next_id), sequence=str(sequence), position=position,
                             options=options)
        self._next_id += 1
        for name, t in (("input", input), ("query", query), ("key", key), ("value", value)):
            if t is not None:
                getattr(r, name).CopyFrom(to_wire(t, name, wire))
        return r

    def _rebuild(self):
        """Reopens the stream and sends every held sequence's tokens again."""
        self._client._reconnect(self._stubs)
        self._open()
        for sequence, held in self._lengths.items():
            kept = self._kept[sequence]
            if kept.input is not None:
                r = self._request(sequence, 0, kept.input, None, None, None, True, "none", True)
            else:
                r = self._request(sequence, 0, None, kept.query, kept.key, kept.value, True,
                                  "none", True)
            response = self._exchange(r)
            if response.HasField("error") or response.sequence_length != held:
                result = _result(response)
                raise Error(result.code if isinstance(result, Error) else
                            grpc.StatusCode.INTERNAL,
                            f"decoder: rebuilding sequence {sequence!r} on a new stream: "
                            f"{result if isinstance(result, Error) else response.sequence_length}")

    def _send(self, make):
        """Sends the request `make()` builds, retrying through broken streams."""
        attempt = 0
        while True:
            if self._call is None:
                raise Error(grpc.StatusCode.FAILED_PRECONDITION, "the decoder is closed")
            try:
                request = make()
                return request, self._exchange(request)
            except StopIteration:
                error = grpc.StatusCode.UNAVAILABLE, "the server ended the decode stream"
            except grpc.RpcError as e:
                error = e
            while True:  # a broken stream: retried, or the end of this decoder
                code = error[0] if isinstance(error, tuple) else error.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or \
                        attempt >= self._retries:
                    self._drop_stream()
                    self._lengths.clear()
                    self._kept.clear()
                    if isinstance(error, tuple):
                        raise Error(*error)
                    raise _error_from_rpc(error, self._client._tls) from None
                attempt += 1
                self.retried += 1
                self._client._retry_pause(attempt - 1)
                self._drop_stream()
                try:
                    self._rebuild()
                    break
                except StopIteration:
                    error = grpc.StatusCode.UNAVAILABLE, "the server ended the decode stream"
                except grpc.RpcError as e:
                    error = e

    def append(self, sequence, input=None, query=None, key=None, value=None, causal=True,
               weights="none"):
        """Appends a message's tokens to ``sequence`` and attends its queries.

        Parameters
        ----------
        sequence : str
            Names a sequence of this stream (a new name starts one).
        input : array_like, optional
            With a model (or self-attention): the next T tokens ``[T, E]`` or
            ``[1, T, E]``, both the queries and what is appended.
        query, key, value : array_like, optional
            Instead of ``input``: queries ``[T, H*D]`` (``[T, E]`` with a
            model) and the keys and values to append ``[T', ...]`` (absent:
            queries over what is held).
        causal : bool, optional
            Query i of the message attends the keys up to its own position
            (default True: a message-by-message decode equals one causal
            forward).
        weights : {"none", "average", "per-head"}, optional
            Return the attention weights ``[T, P+T']`` or ``[H, T, P+T']``.

        Returns
        -------
        (output, weights) : numpy arrays (weights None unless asked).

        Raises
        ------
        attention_client.Error
            The server refused the message (the sequence is unchanged and the
            stream goes on), or the stream broke and could not be rebuilt.
        """
        if (input is None) == (query is None):
            raise ValueError("append takes input=, or query= (with key= and value= to append)")
        if (key is None) != (value is None):
            raise ValueError("key and value go together")
        rows = {n: (None if t is None else _rows(t, n))
                for n, t in (("input", input), ("query", query), ("key", key),
                             ("value", value))}
        sequence = str(sequence)
        _, response = self._send(lambda: self._request(
            sequence, self._lengths.get(sequence, 0), rows["input"], rows["query"], rows["key"],
            rows["value"], causal, weights, sequence not in self._lengths))
        result = _result(response)
        if isinstance(result, Error):
            raise result
        if self._retries > 0:
            kept = self._kept.setdefault(sequence, _Kept(rows["query"]))
            kept.add(rows["input"], rows["key"], rows["value"])
        if response.sequence_length > 0:
            self._lengths[sequence] = response.sequence_length
        else:
            self._lengths.pop(sequence, None)
            self._kept.pop(sequence, None)
        return result

    def end(self, sequence):
        """Frees ``sequence`` on the server (a name not held is fine)."""
        sequence = str(sequence)
        _, response = self._send(lambda: pb.DecodeRequest(
            id="end", sequence=sequence, position=self._lengths.get(sequence, 0), end=True))
        self._lengths.pop(sequence, None)
        self._kept.pop(sequence, None)
        if response.HasField("error"):
            raise _result(response)

    def length(self, sequence):
        """Keys the server holds for ``sequence`` (0 when none)."""
        return self._lengths.get(str(sequence), 0)

    def close(self):
        """Ends the stream; the server frees every sequence it held."""
        if self._call is not None:
            self._queue.put(_END)
            try:
                for _ in self._call:  # drain until the server's end of the stream
                    pass
            except grpc.RpcError:
                pass
            self._call = None
        self._lengths.clear()
        self._kept.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
