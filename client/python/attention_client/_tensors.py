"""Conversions between numpy arrays / torch tensors and the wire's ``Tensor``.

The wire format is row-major, packed, little-endian bytes with a dtype of
FLOAT32, FLOAT16, BFLOAT16 or BOOL (one byte). numpy has no bfloat16, so
bfloat16 is converted by bits: a float32 rounded to nearest even keeps its top
16 bits. torch is never imported here; a torch tensor is recognised by duck
typing, so the module works with numpy alone.
"""

import numpy as np

from ._proto import attention_pb2 as pb

WIRE_DTYPES = ("float32", "float16", "bfloat16")

_WIRE_ENUM = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16}


def float32_to_bfloat16_bits(array):
    """Round float32 values to bfloat16, to nearest even, as torch does.

    Parameters
    ----------
    array : array_like
        Values convertible to float32.

    Returns
    -------
    numpy.ndarray
        ``uint16`` bit patterns of the same shape. NaN stays a (quiet) NaN
        with its sign; infinities and values that round past the largest
        bfloat16 become infinities.
    """
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(bits.view(np.float32))
    if nan.any():
        # Rounding a NaN's payload could carry into the exponent (an infinity):
        # keep the sign and exponent and set the quiet bit instead.
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def bfloat16_bits_to_float32(bits):
    """Widen ``uint16`` bfloat16 bit patterns to float32 (exact).

    Parameters
    ----------
    bits : numpy.ndarray
        ``uint16`` bfloat16 bit patterns.

    Returns
    -------
    numpy.ndarray
        float32 values of the same shape.
    """
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _is_torch(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _torch_dtype_name(x):
    return str(x.dtype).rsplit(".", 1)[-1]  # "torch.bfloat16" -> "bfloat16"


def natural_wire_dtype(x):
    """The wire dtype that carries ``x`` without loss or widening.

    float16 for float16 arrays and tensors, bfloat16 for torch bfloat16
    tensors, float32 for anything else.
    """
    name = _torch_dtype_name(x) if _is_torch(x) else str(getattr(x, "dtype", ""))
    return name if name in ("float16", "bfloat16") else "float32"


def check_wire_dtype(wire_dtype):
    """Return ``wire_dtype`` if it names a wire dtype; raise ValueError otherwise."""
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)}, "
                         f"got {wire_dtype!r}")
    return wire_dtype


def _to_numpy(x, name):
    """A numpy view or copy of an array-like or torch tensor (bfloat16 tensors
    come back as their uint16 bits, flagged by the second value)."""
    if _is_torch(x):
        t = x.detach().cpu()
        if _torch_dtype_name(t) == "bfloat16":
            import torch  # only reached when the caller already uses torch

            return t.contiguous().view(torch.int16).numpy().view(np.uint16), True
        return t.numpy(), False
    array = np.asarray(x)
    if array.dtype == object:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    return array, False


def to_wire(x, name, wire_dtype):
    """A wire ``Tensor`` of float data in ``wire_dtype``.

    Parameters
    ----------
    x : numpy.ndarray, torch.Tensor or array_like
        Any real dtype (float64, float32, float16, torch bfloat16, integers),
        contiguous or not, on any torch device.
    name : str
        The argument's name, for error messages.
    wire_dtype : {"float32", "float16", "bfloat16"}
        The dtype the bytes travel in.

    Returns
    -------
    attention_pb2.Tensor

    Raises
    ------
    TypeError
        ``x`` is not real numeric data.
    """
    array, is_bf16_bits = _to_numpy(x, name)
    if is_bf16_bits:
        if wire_dtype == "bfloat16":
            data = array.astype("<u2", copy=False).tobytes()
            return pb.Tensor(dtype=pb.BFLOAT16, shape=array.shape, data=data)
        array = bfloat16_bits_to_float32(array)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name}: dtype {array.dtype} is not a real number type")
    if wire_dtype == "bfloat16":
        data = float32_to_bfloat16_bits(array).astype("<u2", copy=False).tobytes()
    else:
        data = array.astype("<f4" if wire_dtype == "float32" else "<f2", copy=False).tobytes()
    return pb.Tensor(dtype=_WIRE_ENUM[wire_dtype], shape=array.shape, data=data)


def mask_to_wire(x, name):
    """A wire ``Tensor`` for a mask: BOOL for bool (and uint8, PyTorch's old
    byte masks) data, where true means "may not attend"; FLOAT32 (added to the
    scores) for float data.

    Raises
    ------
    TypeError
        The mask is neither bool, uint8 nor float.
    """
    array, is_bf16_bits = _to_numpy(x, name)
    if is_bf16_bits:
        array = bfloat16_bits_to_float32(array)
    if array.dtype == np.bool_ or array.dtype == np.uint8:
        return pb.Tensor(dtype=pb.BOOL, shape=array.shape,
                         data=(array != 0).astype(np.uint8).tobytes())
    if array.dtype.kind != "f":
        raise TypeError(f"{name}: a mask is bool (true = masked) or float (added to the "
                        f"scores), got {array.dtype}")
    return to_wire(array, name, "float32")


def from_wire(tensor):
    """A numpy array of a wire ``Tensor``.

    FLOAT32 and BFLOAT16 data come back as float32 (numpy has no bfloat16),
    FLOAT16 as float16, BOOL as bool. The array owns its (writable) memory.
    """
    shape = tuple(tensor.shape)
    if tensor.dtype == pb.FLOAT32:
        array = np.frombuffer(tensor.data, dtype="<f4").astype(np.float32)
    elif tensor.dtype == pb.FLOAT16:
        array = np.frombuffer(tensor.data, dtype="<f2").astype(np.float16)
    elif tensor.dtype == pb.BFLOAT16:
        array = bfloat16_bits_to_float32(np.frombuffer(tensor.data, dtype="<u2"))
    elif tensor.dtype == pb.BOOL:
        array = np.frombuffer(tensor.data, dtype=np.uint8) != 0
    else:
        raise ValueError(f"the server sent a tensor of unknown dtype {tensor.dtype}")
    return array.reshape(shape)
