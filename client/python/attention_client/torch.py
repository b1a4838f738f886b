"""``nn.MultiheadAttention`` computed by the Attention Service (needs torch).

Swap a model's attention for the remote one, for example in a transformer
layer whose module the server serves (exported with
``scripts/export_model.py``'s ``export_mha`` and loaded with
``attention-server --model layer0=layer0.safetensors``):

>>> from attention_client.torch import RemoteMultiheadAttention
>>> layer = model.encoder.layers[0]                     # nn.TransformerEncoderLayer
>>> layer.self_attn = RemoteMultiheadAttention.from_module(
...     layer.self_attn, "localhost:50051", "layer0")
>>> y = layer.eval()(x)                                 # same output, attention on the server

Without a served model, ``from_module(mha, target)`` sends the module's weights
inline with every call instead.

Inference only: the outputs carry no gradient and dropout is not applied.

The fast path of ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``
in eval mode (torch 1.13 and 2.x) hands ``self_attn``'s weights to a fused
kernel and never calls its ``forward``. ``RemoteMultiheadAttention`` makes
those checks decline (``_qkv_same_embed_dim`` is False, which 1.13 tests, and
``in_proj_bias`` is None, which 2.x tests first), so the layer calls
``forward`` and the attention runs on the service.
"""

import numpy as np
import torch
from torch import nn

from .client import Client


class RemoteMultiheadAttention(nn.Module):
    """An ``nn.MultiheadAttention`` whose forward runs on an Attention Service.

    Parameters
    ----------
    target : str
        The server, ``host:port``.
    model : str, optional
        A model the server preloaded (``attention-server --model NAME=PATH``).
    embed_dim, num_heads : int, optional
        As ``nn.MultiheadAttention``'s; informative with a model (the
        server's model decides), ``num_heads`` is required without one.
    batch_first : bool, optional
        As ``nn.MultiheadAttention``'s; default True.
    kdim, vdim : int, optional
        As ``nn.MultiheadAttention``'s (default ``embed_dim``).
    projection : mapping, optional
        Inline weights sent with every call instead of a model:
        ``nn.MultiheadAttention.state_dict()`` tensors by their names.
    client : attention_client.Client, optional
        A client to share; default one of this module's own, made from
        ``target`` and ``client_options`` when first needed.
    wire_dtype : {"float32", "float16", "bfloat16"}, optional
        Dtype of the inputs on the wire (default: the query's own).
    timeout : float, optional
        Seconds for each call.
    **client_options
        ``tls``, ``token``, ``retries``, ``tls_ca``, ... as for ``Client``.
    """

    # Read only by the eval-mode fast-path checks of nn.TransformerEncoderLayer
    # and nn.TransformerEncoder: values that make them call forward (see the
    # module's docstring). This module has no local weights to fuse.
    _qkv_same_embed_dim = False
    in_proj_bias = None

    def __init__(self, target, model=None, embed_dim=None, num_heads=None, *, batch_first=True,
                 kdim=None, vdim=None, projection=None, client=None, wire_dtype=None,
                 timeout=None, **client_options):
        super().__init__()
        if model and projection is not None:
            raise ValueError("give a model or a projection, not both")
        if not model and num_heads is None:
            raise ValueError("num_heads is required without a model")
        self.target = target
        self.model = model or ""
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.batch_first = batch_first
        self.wire_dtype = wire_dtype
        self.timeout = timeout
        # Converted once: numpy float32 copies, detached from any module.
        self._projection = None if projection is None else {
            name: _numpy(t) for name, t in projection.items() if t is not None}
        self._client = client
        self._client_options = client_options
        self._decoder = None  # decode's stream, once started
        self._decode_batch = 0

    @classmethod
    def from_module(cls, mha, target, name=None, **kwargs):
        """The remote twin of an ``nn.MultiheadAttention``.

        Parameters
        ----------
        mha : nn.MultiheadAttention
            The module (its shape and ``batch_first``; its weights when
            ``name`` is None).
        target : str
            The server, ``host:port``.
        name : str, optional
            The name the server serves ``mha``'s exported weights under. When
            None, the weights (as they are now) travel with every call.
        **kwargs
            More of the constructor's arguments (``client``, ``timeout``, ...).

        Returns
        -------
        RemoteMultiheadAttention
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported by the service")
        projection = None if name else mha.state_dict()
        return cls(target, model=name, embed_dim=mha.embed_dim, num_heads=mha.num_heads,
                   batch_first=mha.batch_first, kdim=mha.kdim, vdim=mha.vdim,
                   projection=projection, **kwargs)

    @property
    def client(self):
        """The ``Client`` calls go through (made on first use)."""
        if self._client is None:
            self._client = Client(self.target, **self._client_options)
        return self._client

    def __getstate__(self):
        # copy.deepcopy (nn.TransformerEncoder clones its layers) and pickling
        # cannot copy a gRPC channel: a copy makes its own client when needed.
        state = dict(self.__dict__)
        state["_client"] = None
        state["_decoder"] = None
        return state

    def extra_repr(self):
        where = f"model={self.model!r}" if self.model else "projection=inline"
        return (f"target={self.target!r}, {where}, embed_dim={self.embed_dim}, "
                f"num_heads={self.num_heads}, batch_first={self.batch_first}")

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """``nn.MultiheadAttention.forward``, computed on the service.

        Parameters
        ----------
        query, key, value : torch.Tensor
            ``[B, L, E]``, ``[B, S, kdim]``, ``[B, S, vdim]`` when
            ``batch_first`` (``[L, B, E]``, ... otherwise), or unbatched
            ``[L, E]``, ``[S, kdim]``, ``[S, vdim]``.
        key_padding_mask : torch.Tensor, optional
            ``[B, S]``: bool (True = ignore this key) or float (added).
        need_weights : bool, optional
            Return the attention weights.
        attn_mask : torch.Tensor, optional
            ``[L, S]`` or ``[B*H, L, S]``: bool (True = may not attend) or
            float (added).
        average_attn_weights : bool, optional
            Weights averaged over heads ``[B, L, S]``, else ``[B, H, L, S]``.
        is_causal : bool, optional
            torch 2.x's hint that ``attn_mask`` is the causal mask; without an
            ``attn_mask`` it asks for causal attention.

        Returns
        -------
        output : torch.Tensor
            ``[B, L, E]`` (``[L, B, E]`` unless ``batch_first``), in the
            query's dtype and on its device.
        weights : torch.Tensor or None
            ``[B, L, S]`` or ``[B, H, L, S]`` when ``need_weights``.

        Raises
        ------
        attention_client.Error
            The service refused the call (its code and message).
        """
        self_attention = query is key and key is value
        transpose = query.dim() == 3 and not self.batch_first
        if transpose:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        weights = ("none" if not need_weights
                   else "average" if average_attn_weights else "per-head")
        options = dict(heads=self.num_heads or 0, model=self.model, weights=weights,
                       attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                       causal=bool(is_causal and attn_mask is None),
                       projection=self._projection, wire_dtype=self.wire_dtype,
                       timeout=self.timeout)
        if self_attention:
            out, w = self.client.self_attention(query, **options)
        else:
            out, w = self.client.attention(query, key, value, **options)
        output = torch.from_numpy(out).to(device=query.device, dtype=query.dtype)
        if transpose:
            output = output.transpose(0, 1)
        if w is not None:
            w = torch.from_numpy(w).to(device=query.device, dtype=query.dtype)
        return output, w


    def decode(self, x, *, precision="float32"):
        """Incremental (causal) self-attention on the service: appends ``x``'s
        tokens to this module's sequences and returns their outputs, as one
        causal forward over all the tokens appended so far would give them.

        The first call starts one sequence per batch entry (its prompt, the
        prefill); each later call appends more tokens (one per step in a
        generation loop). The keys and values stay on the server, on one
        ``StreamDecode`` stream of this module, so a step sends only its new
        tokens. ``end_decode()`` frees them (the next ``decode`` starts over).

        >>> attn = RemoteMultiheadAttention.from_module(mha, "localhost:50051", "layer0")
        >>> y = attn.decode(prompt)             # [B, P, E]: the prefill
        >>> for _ in range(new_tokens):
        ...     y = attn.decode(x_t)            # [B, 1, E]: each sequence's next token
        >>> attn.end_decode()

        Parameters
        ----------
        x : torch.Tensor
            ``[B, T, E]`` when ``batch_first`` (``[T, B, E]`` otherwise), or
            ``[T, E]`` for one sequence. B stays the same until
            ``end_decode()``.
        precision : {"float32", "bfloat16"}, optional
            The first call's choice holds: ``"bfloat16"`` keeps the keys and
            values in bfloat16 on the server.

        Returns
        -------
        torch.Tensor
            The outputs of ``x``'s tokens, shaped as ``x``, in its dtype and
            on its device.

        Notes
        -----
        Needs a model the server serves (``from_module(mha, target, name)``):
        decode streams take no inline weights. With the client's ``retries``,
        a stream that breaks is rebuilt on a live replica (see
        ``attention_client.Decoder``).
        """
        if not self.model:
            raise ValueError("decode needs a model the server serves (from_module(mha, target, "
                             "name)): decode streams take no inline weights")
        unbatched = x.dim() == 2
        batch = x.unsqueeze(0) if unbatched else x if self.batch_first else x.transpose(0, 1)
        if self._decoder is None:
            self._decoder = self.client.decoder(model=self.model, precision=precision,
                                                timeout=self.timeout, wire_dtype=self.wire_dtype)
            self._decode_batch = batch.shape[0]
        elif batch.shape[0] != self._decode_batch:
            raise ValueError(f"decode: batch {batch.shape[0]} where the sequences started with "
                             f"{self._decode_batch} (end_decode() first)")
        outs = [self._decoder.append(str(b), input=batch[b])[0] for b in range(batch.shape[0])]
        out = torch.from_numpy(np.stack(outs)).to(device=x.device, dtype=x.dtype)
        return out[0] if unbatched else out if self.batch_first else out.transpose(0, 1)

    def end_decode(self):
        """Frees the sequences ``decode`` started (closes their stream)."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None


def _numpy(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().float().numpy().copy()
    return np.array(t, dtype=np.float32)
