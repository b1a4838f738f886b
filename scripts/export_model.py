#!/usr/bin/env python3
"""Export a torch.nn.MultiheadAttention to a safetensors model file for attention-server.

From Python, with your own module (any batch_first setting; add_bias_kv / add_zero_attn
are not supported by the service):

    import sys; sys.path.insert(0, "scripts")
    from export_model import export_mha
    mha = my_model.encoder.layers[0].self_attn          # an nn.MultiheadAttention
    export_mha(mha, "layer0.safetensors")                # F32; dtype="float16"/"bfloat16" also work
    # then: attention-server --model layer0=layer0.safetensors

From the command line:

    # a randomly initialised module (seeded, deterministic)
    /usr/bin/python3 scripts/export_model.py --embed-dim 64 --num-heads 4 --seed 0 --out model.safetensors
    # an existing module's saved state_dict (torch.save(mha.state_dict(), "mha.pt"))
    /usr/bin/python3 scripts/export_model.py --from-state-dict mha.pt --num-heads 4 --out model.safetensors

The file holds the module's state_dict tensors under PyTorch's names (in_proj_weight,
in_proj_bias, out_proj.weight, out_proj.bias, or q_proj_weight/k_proj_weight/v_proj_weight
when kdim/vdim differ from embed_dim) and string metadata num_heads, embed_dim, kdim, vdim,
bias, format. Only torch and the standard library are used.
"""

import argparse
import ctypes
import json
import struct
import sys

import torch
from torch import nn

_DTYPE_TO_ST = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.bool: "BOOL",
}
_ST_TO_DTYPE = {v: k for k, v in _DTYPE_TO_ST.items()}
_NAMED_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensor_bytes(t):
    """Raw row-major little-endian bytes of a CPU tensor (BOOL: one byte 0/1 per element)."""
    t = t.detach().cpu()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    t = t.contiguous()
    n = t.numel() * t.element_size()
    if n == 0:
        return b""
    if sys.byteorder == "little" or t.element_size() == 1:
        return ctypes.string_at(t.data_ptr(), n)
    # Big-endian host: swap each element's bytes.
    raw = ctypes.string_at(t.data_ptr(), n)
    size = t.element_size()
    return b"".join(raw[i:i + size][::-1] for i in range(0, n, size))


def write_safetensors(path, tensors, metadata=None):
    """Write `tensors` (an ordered mapping name -> tensor of float32/float16/bfloat16/bool)
    to `path` in the safetensors format, tensors packed in the mapping's order."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_TO_ST:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        data = _tensor_bytes(t)
        header[name] = {
            "dtype": _DTYPE_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def load_safetensors(path):
    """Read a safetensors file: returns (dict name -> torch.Tensor, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds file size")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    data = blob[8 + n:]
    tensors = {}
    for name, info in header.items():
        dtype = _ST_TO_DTYPE.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: {name}: unsupported dtype {info['dtype']}")
        shape = [int(d) for d in info["shape"]]
        begin, end = info["data_offsets"]
        numel = 1
        for d in shape:
            numel *= d
        itemsize = 1 if dtype == torch.bool else torch.tensor([], dtype=dtype).element_size()
        if end - begin != numel * itemsize or end > len(data) or begin < 0:
            raise ValueError(f"{path}: {name}: bad data_offsets {begin},{end} for shape {shape}")
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        buf = bytearray(data[begin:end])
        if dtype == torch.bool:
            t = torch.frombuffer(buf, dtype=torch.uint8) != 0
        else:
            t = torch.frombuffer(buf, dtype=dtype)
            if sys.byteorder != "little":
                t = torch.frombuffer(bytearray(b"".join(
                    buf[i:i + itemsize][::-1] for i in range(0, len(buf), itemsize))), dtype=dtype)
        tensors[name] = t.reshape(shape).clone()
    return tensors, metadata


def _as_dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in _NAMED_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_NAMED_DTYPES)}, got {dtype!r}")
        return _NAMED_DTYPES[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported dtype {dtype}")
    return dtype


def export_mha(module, path, extra_metadata=None, dtype=torch.float32):
    """Write `module`'s (an nn.MultiheadAttention) state_dict to a safetensors model file.

    dtype: storage dtype of the weights, torch.float32/float16/bfloat16 or their names.
    extra_metadata: more string metadata (must not redefine the keys this writes).
    """
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"expected nn.MultiheadAttention, got {type(module).__name__}")
    if module.bias_k is not None or module.bias_v is not None:
        raise ValueError("add_bias_kv=True is not supported by the attention service")
    if module.add_zero_attn:
        raise ValueError("add_zero_attn=True is not supported by the attention service")
    dtype = _as_dtype(dtype)
    tensors = {}
    for name, t in module.state_dict().items():
        if t is None:
            continue
        tensors[name] = t.detach().to(dtype)
    metadata = {
        "num_heads": str(module.num_heads),
        "embed_dim": str(module.embed_dim),
        "kdim": str(module.kdim),
        "vdim": str(module.vdim),
        "bias": "true" if module.in_proj_bias is not None else "false",
        "format": "pt",
    }
    for k, v in (extra_metadata or {}).items():
        if k in metadata:
            raise ValueError(f"extra_metadata may not redefine {k!r}")
        metadata[str(k)] = str(v)
    write_safetensors(path, tensors, metadata)


def mha_from_state_dict(state_dict, num_heads, prefix=""):
    """Build an nn.MultiheadAttention(batch_first=True) from a (possibly prefixed) state_dict."""
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if "out_proj.weight" not in sd:
        found = sorted(k[: -len("out_proj.weight")] for k in state_dict
                       if k.endswith("out_proj.weight"))
        hint = (f"; attention modules in it: --prefix {' / --prefix '.join(found[:5])}"
                if found else "; it holds no nn.MultiheadAttention (no key ends in out_proj.weight)")
        raise ValueError(f"no {prefix}out_proj.weight in the state_dict{hint}")
    embed_dim = sd["out_proj.weight"].shape[0]
    kdim = sd["k_proj_weight"].shape[1] if "k_proj_weight" in sd else embed_dim
    vdim = sd["v_proj_weight"].shape[1] if "v_proj_weight" in sd else embed_dim
    bias = "in_proj_bias" in sd
    module = nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim=kdim, vdim=vdim,
                                   add_bias_kv="bias_k" in sd, batch_first=True)
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return module


def main(argv=None):
    p = argparse.ArgumentParser(description="Export an nn.MultiheadAttention to safetensors.")
    p.add_argument("--embed-dim", type=int, help="E (random module)")
    p.add_argument("--num-heads", type=int, required=True)
    p.add_argument("--kdim", type=int, help="key feature size (default E)")
    p.add_argument("--vdim", type=int, help="value feature size (default E)")
    p.add_argument("--no-bias", action="store_true", help="module without biases")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before init")
    p.add_argument("--from-state-dict", metavar="FILE.pt",
                   help="export a state_dict saved with torch.save instead of a random module")
    p.add_argument("--prefix", default="",
                   help="with --from-state-dict: key prefix of the attention module "
                        "(e.g. 'encoder.layers.0.self_attn.')")
    p.add_argument("--dtype", choices=sorted(_NAMED_DTYPES), default="float32")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    if args.from_state_dict:
        obj = torch.load(args.from_state_dict, map_location="cpu")
        if isinstance(obj, nn.MultiheadAttention):
            module = obj
        else:
            if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
                obj = obj["state_dict"]
            try:
                module = mha_from_state_dict(obj, args.num_heads, args.prefix)
            except (ValueError, RuntimeError, KeyError) as e:
                p.error(f"--from-state-dict {args.from_state_dict}: {e}")
    else:
        if args.embed_dim is None:
            p.error("--embed-dim is required without --from-state-dict")
        torch.manual_seed(args.seed)
        module = nn.MultiheadAttention(args.embed_dim, args.num_heads, bias=not args.no_bias,
                                       kdim=args.kdim, vdim=args.vdim, batch_first=True)
    export_mha(module, args.out, dtype=args.dtype)
    print(f"wrote {args.out}: embed_dim={module.embed_dim} num_heads={module.num_heads} "
          f"kdim={module.kdim} vdim={module.vdim} bias={module.in_proj_bias is not None} "
          f"dtype={args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
