#!/usr/bin/env python3
"""Regenerate every test fixture and the demo model:

    /usr/bin/python3 tests/make_fixtures.py [--out-dir DIR]

writes (DIR defaults to the repository root)
    DIR/models/demo.safetensors                 demo model: nn.MultiheadAttention(64, 4), seed 0
    DIR/tests/fixtures/models/*.safetensors     model files for the end-to-end fixtures
    DIR/tests/fixtures/*.safetensors            one fixture per file (see tests/fixtures/README.md)
    DIR/tests/fixtures/bf16/*.safetensors       bfloat16 precision: inputs, float32 weights, the
                                                float64 reference and PyTorch bfloat16's error

Expected values: cases with projection weights run a real torch.nn.MultiheadAttention
(train() mode, dropout 0, no_grad) and are cross-checked against the float64 reference below;
cases without projection are the float64 reference itself, cast to float32.
Deterministic: re-running gives byte-identical files. Needs torch (Debian's python3-torch).
"""

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # byte-identical output whatever the environment
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
from export_model import export_mha, load_safetensors, mha_from_state_dict, write_safetensors  # noqa: E402,E501

torch.set_num_threads(1)
NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- reference
def additive(mask):
    """Bool mask (True = not allowed) or float mask -> float64 additive mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float64).masked_fill(mask, NEG_INF)
    return mask.double()


def ref_attention(q, k, v, num_heads, num_kv_heads=0, scale=None, causal=False,
                  attn_mask=None, key_padding_mask=None, proj=None):
    """float64 reference of the service's semantics (docs/api.md). Returns (output, per-head
    weights); weights are [B,H,L,S] ([H,L,S] unbatched)."""
    q, k, v = q.double(), k.double(), v.double()
    unbatched = q.dim() == 2
    if unbatched:
        q, k, v = q[None], k[None], v[None]
    rank4 = q.dim() == 4
    H = num_heads
    if proj is not None:
        if "in_proj_weight" in proj:
            wq, wk, wv = proj["in_proj_weight"].double().chunk(3)
        else:
            wq, wk, wv = (proj[n].double() for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
        if "in_proj_bias" in proj:
            bq, bk, bv = proj["in_proj_bias"].double().chunk(3)
        else:
            bq = bk = bv = None
        q, k, v = F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv)
    if rank4:
        B, _, L, D = q.shape
        Hkv = k.shape[1]
    else:
        B, L, _ = q.shape
        Hkv = num_kv_heads or H
        D = q.shape[-1] // H
        q = q.reshape(B, L, H, D).transpose(1, 2)
        k = k.reshape(B, k.shape[1], Hkv, -1).transpose(1, 2)
        v = v.reshape(B, v.shape[1], Hkv, -1).transpose(1, 2)
    S = k.shape[2]
    G = H // Hkv
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    bias = torch.zeros(B, H, L, S, dtype=torch.float64)
    if causal:
        bias = bias.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), NEG_INF)
    if attn_mask is not None:
        m = additive(attn_mask)
        bias = bias + (m.reshape(B, H, L, S) if m.dim() == 3 else m)
    if key_padding_mask is not None:
        bias = bias + additive(key_padding_mask).reshape(B, 1, 1, S)
    scores = scores + bias
    mx = scores.amax(-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.exp(scores - mx)
    s = e.sum(-1, keepdim=True)
    w = torch.where(s > 0, e / s, torch.zeros_like(e))  # fully masked row -> zeros
    out = w @ v  # [B,H,L,Dv]
    if not rank4:
        out = out.transpose(1, 2).reshape(B, L, -1)
    if proj is not None:
        out = F.linear(out, proj["out_proj.weight"].double(),
                       proj["out_proj.bias"].double() if "out_proj.bias" in proj else None)
    if unbatched:
        out, w = out[0], w[0]
    return out, w


def select_weights(w_per_head, mode):
    if mode == "none":
        return None
    return w_per_head.mean(dim=-3) if mode == "average" else w_per_head


def assert_close(name, what, got, ref):
    assert got.shape == ref.shape, f"{name}: {what} shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: {what} has NaN/inf"
    err = (got.double() - ref).abs().max().item()
    tol = 2e-5 * max(1.0, ref.abs().max().item())
    assert err <= tol, f"{name}: {what} max abs err {err:.3g} > {tol:.3g}"


# ----------------------------------------------------------------------------- helpers
def gen(name):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def randn(g, *shape):
    return torch.randn(*shape, generator=g)


def rand_bool(g, shape, p=0.3, keep_first=True):
    """Random bool mask (True = masked); the first key (last dim) stays allowed."""
    m = torch.rand(*shape, generator=g) < p
    if keep_first:
        m[..., 0] = False
    return m


def rand_float_mask(g, shape, n_inf=0):
    """Random float additive mask; n_inf entries -inf (never in the first key column)."""
    m = torch.randn(*shape, generator=g)
    flat = m.view(-1, m.shape[-1])
    for _ in range(n_inf):
        r = int(torch.randint(flat.shape[0], (1,), generator=g))
        c = int(torch.randint(1, flat.shape[1], (1,), generator=g))
        flat[r, c] = NEG_INF
    return m


def padding_mask(lengths, S):
    """[B,S] bool key_padding_mask, True past each sequence's length."""
    return torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]


def make_mha(seed, E, H, bias=True, kdim=None, vdim=None, random_bias=True):
    torch.manual_seed(seed)
    mod = nn.MultiheadAttention(E, H, dropout=0.0, bias=bias, kdim=kdim, vdim=vdim,
                                batch_first=True)
    if bias and random_bias:  # PyTorch initialises biases to zero: make them matter
        with torch.no_grad():
            mod.in_proj_bias.uniform_(-0.5, 0.5)
            mod.out_proj.bias.uniform_(-0.5, 0.5)
    return mod


def case_tensors(kind, inputs, attn_mask, kpm, projection):
    """A case's inputs, masks and projection weights, by their fixture names."""
    tensors = {}
    if kind == "self_attention":
        tensors["input"] = inputs[0]
    else:
        tensors["query"], tensors["key"], tensors["value"] = inputs
    if attn_mask is not None:
        tensors["attn_mask"] = attn_mask
    if kpm is not None:
        tensors["key_padding_mask"] = kpm
    if projection is not None:
        tensors.update(projection)
    return tensors


def run_module(mod, q, k, v, num_heads, causal, attn_mask, kpm, weights):
    """nn.MultiheadAttention forward (1.13): causal passed as a bool attn_mask; a rank-4
    attn_mask is expanded to [B*H,L,S]."""
    L, S = q.shape[-2], k.shape[-2]
    mask = attn_mask
    if mask is not None and mask.dim() == 4:
        B = q.shape[0]
        mask = mask.expand(B, num_heads, L, S).reshape(B * num_heads, L, S)
    if causal:
        cm = ~torch.ones(L, S, dtype=torch.bool).tril()
        if mask is None:
            mask = cm
        elif mask.dtype == torch.bool:
            mask = mask | cm
        else:
            mask = mask.masked_fill(cm, NEG_INF)
    mod.train()  # 1.13's eval fast path fails without bias; dropout is 0
    with torch.no_grad():
        out, w = mod(q, k, v, key_padding_mask=kpm, attn_mask=mask,
                     need_weights=weights != "none", average_attn_weights=weights == "average")
    return out, w


# ----------------------------------------------------------------------------- fixtures
class Writer:
    def __init__(self, fixtures_dir):
        self.dir = fixtures_dir
        self.written = []

    def case(self, name, kind, inputs, num_heads, num_kv_heads=0, scale=None, causal=False,
             attn_mask=None, kpm=None, weights="none", module=None, model=None,
             model_state=None):
        """inputs: (query, key, value) or (input,). module: inline projection from this
        nn.MultiheadAttention; model/model_state: reference a model file by name."""
        if kind == "self_attention":
            (x,) = inputs
            q = k = v = x
        else:
            q, k, v = inputs
        proj_module = module
        if model is not None:
            proj_module = mha_from_state_dict(model_state, num_heads)
        proj = None
        if proj_module is not None:
            proj = {n: t.detach().clone() for n, t in proj_module.state_dict().items()}
        ref_out, ref_w = ref_attention(q, k, v, num_heads, num_kv_heads, scale, causal,
                                       attn_mask, kpm, proj)
        ref_w = select_weights(ref_w, weights)
        if proj_module is not None:
            assert scale is None and num_kv_heads == 0
            out, w = run_module(proj_module, q, k, v, num_heads, causal, attn_mask, kpm, weights)
            assert_close(name, "output", out, ref_out)
            if ref_w is not None:
                assert_close(name, "weights", w, ref_w)
            else:
                assert w is None
        else:
            out = ref_out.float()
            w = None if ref_w is None else ref_w.float()

        tensors = case_tensors(kind, inputs, attn_mask, kpm, proj if module is not None else None)
        tensors["expected_output"] = out
        if w is not None:
            tensors["expected_weights"] = w
        tensors = {n: t.contiguous() for n, t in tensors.items()}
        meta = {"kind": kind, "num_heads": str(num_heads), "num_kv_heads": str(num_kv_heads)}
        if scale is not None:
            meta["scale"] = repr(scale)
        meta["causal"] = "1" if causal else "0"
        meta["weights"] = weights
        if model is not None:
            meta["model"] = model
        path = os.path.join(self.dir, name + ".safetensors")
        write_safetensors(path, tensors, meta)
        # the file must read back exactly
        back, back_meta = load_safetensors(path)
        assert back_meta == meta and list(back) == list(tensors)
        assert all(torch.equal(back[n], t) for n, t in tensors.items()), name
        self.written.append((name, kind, tensors, meta))


def module_cases(W):
    def c(name, E, H, qs, ks=None, vs=None, *, bias=True, kdim=None, vdim=None, self_attn=False,
          **kw):
        g = gen(name)
        mod = make_mha(zlib.crc32(name.encode()) & 0xFFFF, E, H, bias, kdim, vdim)
        if self_attn:
            inputs = (randn(g, *qs),)
        else:
            inputs = (randn(g, *qs), randn(g, *ks), randn(g, *vs))
        masks = kw.pop("masks", None)
        if masks is not None:
            kw.update(masks(g))
        W.case(name, "self_attention" if self_attn else "attention", inputs, H, module=mod, **kw)

    # packed in_proj, self-attention
    c("mha_self_packed_bias_avg", 32, 4, (2, 10, 32), self_attn=True, weights="average")
    c("mha_self_packed_nobias_none", 32, 4, (2, 7, 32), self_attn=True, bias=False)
    c("mha_self_packed_bias_perhead", 48, 6, (1, 9, 48), self_attn=True, weights="per_head")
    # cross-attention, L != S
    c("mha_cross_bias_avg", 32, 4, (2, 5, 32), (2, 11, 32), (2, 11, 32), weights="average")
    # kdim / vdim != E: separate q/k/v projection weights
    c("mha_cross_kvdim_bias_perhead", 32, 4, (2, 6, 32), (2, 8, 20), (2, 8, 12),
      kdim=20, vdim=12, weights="per_head")
    c("mha_cross_kvdim_nobias_none", 16, 2, (3, 4, 16), (3, 7, 24), (3, 7, 8),
      kdim=24, vdim=8, bias=False)
    # causal (top-left), L == S, L < S, L > S
    c("mha_self_causal_avg", 32, 4, (2, 8, 32), self_attn=True, causal=True, weights="average")
    c("mha_cross_causal_l_lt_s_perhead", 32, 2, (2, 5, 32), (2, 9, 32), (2, 9, 32),
      causal=True, weights="per_head")
    c("mha_cross_causal_l_gt_s_avg", 32, 4, (2, 9, 32), (2, 5, 32), (2, 5, 32),
      causal=True, weights="average")
    # attn_mask layouts
    c("mha_attn_mask_bool_2d_avg", 32, 4, (2, 6, 32), (2, 8, 32), (2, 8, 32),
      masks=lambda g: {"attn_mask": rand_bool(g, (6, 8))}, weights="average")
    c("mha_attn_mask_float_2d_perhead", 32, 4, (2, 7, 32), self_attn=True,
      masks=lambda g: {"attn_mask": rand_float_mask(g, (7, 7), n_inf=4)}, weights="per_head")
    c("mha_attn_mask_bool_3d_avg", 32, 4, (2, 5, 32), (2, 6, 32), (2, 6, 32),
      masks=lambda g: {"attn_mask": rand_bool(g, (8, 5, 6))}, weights="average")
    c("mha_attn_mask_float_3d_nobias_none", 16, 2, (2, 6, 16), self_attn=True, bias=False,
      masks=lambda g: {"attn_mask": rand_float_mask(g, (4, 6, 6), n_inf=3)})
    c("mha_attn_mask_rank4_1hls_bool_perhead", 32, 4, (2, 5, 32), (2, 7, 32), (2, 7, 32),
      masks=lambda g: {"attn_mask": rand_bool(g, (1, 4, 5, 7))}, weights="per_head")
    # key_padding_mask
    c("mha_kpm_bool_avg", 32, 4, (3, 8, 32), self_attn=True,
      masks=lambda g: {"kpm": padding_mask([8, 5, 2], 8)}, weights="average")
    c("mha_kpm_float_none", 32, 4, (2, 6, 32), (2, 9, 32), (2, 9, 32),
      masks=lambda g: {"kpm": rand_float_mask(g, (2, 9), n_inf=2)})
    # combined masks
    c("mha_causal_attn_float_kpm_bool_perhead", 32, 4, (2, 8, 32), self_attn=True, causal=True,
      masks=lambda g: {"attn_mask": rand_float_mask(g, (8, 8)), "kpm": padding_mask([8, 6], 8)},
      weights="per_head")
    c("mha_attn_bool_kpm_bool_avg", 32, 4, (2, 6, 32), (2, 10, 32), (2, 10, 32),
      masks=lambda g: {"attn_mask": rand_bool(g, (6, 10)), "kpm": padding_mask([10, 7], 10)},
      weights="average")
    # unbatched [L, E]
    c("mha_unbatched_self_avg", 32, 4, (7, 32), self_attn=True, weights="average")
    c("mha_unbatched_cross_kvdim_kpm_perhead", 32, 4, (5, 32), (8, 20), (8, 12),
      kdim=20, vdim=12, masks=lambda g: {"kpm": padding_mask([6], 8)[0]}, weights="per_head")


def sdpa_cases(W):
    def c(name, H, qs, ks=None, vs=None, *, self_attn=False, **kw):
        g = gen(name)
        if self_attn:
            inputs = (randn(g, *qs),)
        else:
            inputs = (randn(g, *qs), randn(g, *ks), randn(g, *vs))
        masks = kw.pop("masks", None)
        if masks is not None:
            kw.update(masks(g))
        W.case(name, "self_attention" if self_attn else "attention", inputs, H, **kw)

    c("sdpa_cross_none", 4, (2, 6, 32), (2, 9, 32), (2, 9, 32))
    c("sdpa_self_causal_avg", 4, (2, 8, 32), self_attn=True, causal=True, weights="average")
    c("sdpa_d_ne_dv_perhead", 4, (2, 5, 32), (2, 7, 32), (2, 7, 16), weights="per_head")
    c("sdpa_scale_avg", 2, (2, 6, 16), (2, 6, 16), (2, 6, 16), scale=0.3, weights="average")
    c("sdpa_causal_l_lt_s_perhead", 2, (1, 4, 16), (1, 10, 16), (1, 10, 16), causal=True,
      weights="per_head")
    c("sdpa_causal_l_gt_s_avg", 2, (2, 10, 16), (2, 4, 16), (2, 4, 16), causal=True,
      weights="average")
    # grouped-query / multi-query attention
    c("sdpa_gqa_avg", 4, (2, 6, 32), (2, 8, 16), (2, 8, 16), num_kv_heads=2, weights="average")
    c("sdpa_gqa_causal_kpm_perhead", 4, (1, 8, 32), (1, 8, 16), (1, 8, 16), num_kv_heads=2,
      causal=True, masks=lambda g: {"kpm": padding_mask([7], 8)}, weights="per_head")
    c("sdpa_mqa_kpm_scale_none", 4, (2, 6, 32), (2, 9, 8), (2, 9, 4), num_kv_heads=1,
      scale=0.125, masks=lambda g: {"kpm": padding_mask([9, 4], 9)})
    # rank-4 [B, H, L, D] inputs
    c("sdpa_rank4_mask_b11s_perhead", 4, (2, 4, 6, 8), (2, 4, 7, 8), (2, 4, 7, 5),
      masks=lambda g: {"attn_mask": rand_bool(g, (2, 1, 1, 7))}, weights="per_head")
    c("sdpa_rank4_gqa_causal_avg", 4, (1, 4, 5, 8), (1, 2, 9, 8), (1, 2, 9, 8), num_kv_heads=2,
      causal=True, weights="average")
    # attn_mask layouts on [B, L, H*D] inputs
    c("sdpa_mask_1hls_float_perhead", 4, (2, 5, 32), (2, 7, 32), (2, 7, 32),
      masks=lambda g: {"attn_mask": rand_float_mask(g, (1, 4, 5, 7), n_inf=5)},
      weights="per_head")
    c("sdpa_mask_bhls_3d_bool_gqa_avg", 4, (2, 5, 32), (2, 6, 16), (2, 6, 16), num_kv_heads=2,
      masks=lambda g: {"attn_mask": rand_bool(g, (8, 5, 6))}, weights="average")
    # all-masked rows -> zeros (output and weights)
    def fully_masked(g):
        am = rand_bool(g, (5, 6))
        am[2, :] = True                      # row 2 of every batch: all keys masked
        return {"attn_mask": am, "kpm": padding_mask([6, 0], 6)}  # batch 1: every key padded
    c("sdpa_fully_masked_rows_perhead", 2, (2, 5, 16), (2, 6, 16), (2, 6, 16),
      masks=fully_masked, weights="per_head")

    def fully_masked_causal(g):
        am = torch.zeros(6, 6, dtype=torch.bool)
        am[0, 0] = True                      # with causal: row 0 has no key left
        am[3, 1] = True
        kpm = torch.zeros(2, 6)
        kpm[1, 2] = NEG_INF
        kpm[0, 4] = -1.5
        return {"attn_mask": am, "kpm": kpm}
    c("sdpa_fully_masked_causal_avg", 2, (2, 6, 16), self_attn=True, causal=True,
      masks=fully_masked_causal, weights="average")
    # bool attn_mask + float key_padding_mask: added (2.x); 1.13's module would OR them
    c("sdpa_attn_bool_kpm_float_avg", 2, (2, 6, 16), (2, 8, 16), (2, 8, 16),
      masks=lambda g: {"attn_mask": rand_bool(g, (6, 8)), "kpm": rand_float_mask(g, (2, 8))},
      weights="average")
    # unbatched [L, E]
    c("sdpa_unbatched_mask3d_kpm_float_avg", 2, (6, 16), (8, 16), (8, 16),
      masks=lambda g: {"attn_mask": rand_float_mask(g, (2, 6, 8)),
                       "kpm": rand_float_mask(g, (8,), n_inf=1)}, weights="average")
    c("sdpa_unbatched_self_causal_perhead", 2, (7, 16), self_attn=True, causal=True,
      weights="per_head")


def e2e_cases(W, models_dir, demo_path):
    """Model files (exported with export_mha) and fixtures that reference them by name."""
    torch.manual_seed(0)
    demo = nn.MultiheadAttention(64, 4, batch_first=True)  # = export_model.py --embed-dim 64 --num-heads 4 --seed 0
    export_mha(demo, demo_path)
    export_mha(make_mha(1, 32, 4), os.path.join(models_dir, "mha_e32_h4.safetensors"))
    export_mha(make_mha(2, 32, 2, bias=False, kdim=24, vdim=16),
               os.path.join(models_dir, "mha_e32_h2_kv.safetensors"))

    def model(path):
        state, meta = load_safetensors(path)
        return state, int(meta["num_heads"])

    state, H = model(demo_path)
    g = gen("e2e_demo_self_avg")
    W.case("e2e_demo_self_avg", "self_attention", (randn(g, 2, 10, 64),), H,
           weights="average", model="demo", model_state=state)

    state, H = model(os.path.join(models_dir, "mha_e32_h4.safetensors"))
    g = gen("e2e_mha_e32_h4_cross_perhead")
    W.case("e2e_mha_e32_h4_cross_perhead", "attention",
           (randn(g, 2, 5, 32), randn(g, 2, 7, 32), randn(g, 2, 7, 32)), H,
           kpm=padding_mask([7, 4], 7), weights="per_head", model="mha_e32_h4", model_state=state)

    state, H = model(os.path.join(models_dir, "mha_e32_h2_kv.safetensors"))
    g = gen("e2e_mha_e32_h2_kv_none")
    W.case("e2e_mha_e32_h2_kv_none", "attention",
           (randn(g, 1, 6, 32), randn(g, 1, 9, 24), randn(g, 1, 9, 16)), H,
           weights="none", model="mha_e32_h2_kv", model_state=state)


def rel_max_error(got, ref):
    """max |got - ref| / max |ref| (as RelativeMaxError in core/reference.h)."""
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def bf16_cases(out_dir):
    """PyTorch's own bfloat16 error on inputs the service's bfloat16 precision is held to:
    the module cast to bfloat16 (what a PyTorch user runs for bf16 inference), or for plain
    SDPA the same products by hand on bfloat16 tensors. Each file holds the inputs (float32),
    the float32 weights, the float64 reference as float32, and in its metadata
    torch_bf16_error (relative max error of PyTorch bf16's output vs the reference)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(name, kind, inputs, H, ref_out, torch_out, causal=False, kpm=None, module=None):
        state = None if module is None else {
            n: t.detach().clone() for n, t in module.state_dict().items()}
        tensors = case_tensors(kind, inputs, None, kpm, state)
        tensors["expected_output"] = ref_out.float()
        tensors = {n: t.contiguous() for n, t in tensors.items()}
        err = rel_max_error(torch_out, ref_out)
        meta = {"kind": kind, "num_heads": str(H), "num_kv_heads": "0",
                "causal": "1" if causal else "0", "weights": "none", "precision": "bfloat16",
                "torch_bf16_error": repr(err)}
        write_safetensors(os.path.join(out_dir, name + ".safetensors"), tensors, meta)
        written.append((name, err))

    def module_case(name, E, H, B, L, S=None, self_attn=True, causal=False, kpm=None):
        g = gen(name)
        mod = make_mha(zlib.crc32(name.encode()) & 0xFFFF, E, H)
        if self_attn:
            x = randn(g, B, L, E)
            inputs, (q, k, v) = (x,), (x, x, x)
        else:
            q, k, v = randn(g, B, L, E), randn(g, B, S, E), randn(g, B, S, E)
            inputs = (q, k, v)
        proj = {n: t.detach().clone() for n, t in mod.state_dict().items()}
        ref, _ = ref_attention(q, k, v, H, causal=causal, key_padding_mask=kpm, proj=proj)
        mod16 = make_mha(zlib.crc32(name.encode()) & 0xFFFF, E, H).to(torch.bfloat16)
        out16, _ = run_module(mod16, q.bfloat16(), k.bfloat16(), v.bfloat16(), H, causal, None,
                              kpm, "none")
        save(name, "self_attention" if self_attn else "attention", inputs, H, ref, out16,
             causal=causal, kpm=kpm, module=mod)

    def sdpa_case(name, B, H, L, S, D):
        g = gen(name)
        q, k, v = randn(g, B, L, H * D), randn(g, B, S, H * D), randn(g, B, S, H * D)
        ref, _ = ref_attention(q, k, v, H)
        heads = [t.bfloat16().reshape(B, -1, H, D).transpose(1, 2) for t in (q, k, v)]
        scores = (heads[0] @ heads[1].transpose(-1, -2)) * (1.0 / math.sqrt(D))
        out16 = (torch.softmax(scores, dim=-1) @ heads[2]).transpose(1, 2).reshape(B, L, H * D)
        save(name, "attention", (q, k, v), H, ref, out16)

    module_case("bf16_mha_self_e64_h4", 64, 4, B=2, L=24)
    module_case("bf16_mha_self_e128_h8_causal", 128, 8, B=2, L=40, causal=True)
    module_case("bf16_mha_cross_e96_h4_kpm", 96, 4, B=2, L=12, S=20, self_attn=False,
                kpm=padding_mask([20, 13], 20))
    module_case("bf16_mha_self_e256_h8", 256, 8, B=1, L=48)
    sdpa_case("bf16_sdpa_h4_d32", B=2, H=4, L=48, S=64, D=32)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default=REPO,
                   help="root to write models/ and tests/fixtures/ under (default: the repo)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    fixtures_dir = os.path.join(args.out_dir, "tests", "fixtures")
    models_dir = os.path.join(fixtures_dir, "models")
    demo_dir = os.path.join(args.out_dir, "models")
    for d in (fixtures_dir, models_dir, demo_dir):
        os.makedirs(d, exist_ok=True)

    W = Writer(fixtures_dir)
    module_cases(W)
    sdpa_cases(W)
    e2e_cases(W, models_dir, os.path.join(demo_dir, "demo.safetensors"))
    bf16 = bf16_cases(os.path.join(fixtures_dir, "bf16"))

    names = [n for n, *_ in W.written]
    assert len(names) == len(set(names))
    stale = sorted(f for f in os.listdir(fixtures_dir)
                   if f.endswith(".safetensors") and f[:-len(".safetensors")] not in names)
    if not args.quiet:
        for name, kind, tensors, meta in W.written:
            shapes = " ".join(f"{n}{list(t.shape)}{'b' if t.dtype == torch.bool else ''}"
                              for n, t in tensors.items() if not n.startswith(("in_", "q_", "k_", "v_", "out_")))
            opts = " ".join(f"{k}={v}" for k, v in meta.items() if k != "kind")
            print(f"{name}: {kind} {shapes} | {opts}")
        print(f"{len(names)} fixtures in {fixtures_dir}")
        for name, err in bf16:
            print(f"{name}: PyTorch bfloat16 relative max error {err:.3g}")
    if stale:
        print("warning: fixture files not produced by this script: " + ", ".join(stale),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
