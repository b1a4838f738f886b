#include "core/attention_kernels.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "core/bf16_kernels.h"
#include "core/guard.h"
#include "core/onednn_ops.h"

namespace attention {
namespace internal {
namespace {

// With causal masking a tile computes only the keys up to its last row,
// rounded up to this many columns (bounds the number of distinct shapes).
constexpr int64_t kCausalColumnStep = 64;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The element type of Q, K and V (and of P in P V).
Elem Operands(const HeadsProblem& problem) { return problem.plan->bf16 ? Elem::kBF16 : Elem::kF32; }

// Element i of Q, K or V.
const void* At(const HeadsProblem& problem, const void* base, int64_t i) {
  return static_cast<const char*>(base) + i * (problem.plan->bf16 ? 2 : 4);
}

// Element i of the output.
void* OutputAt(const HeadsProblem& problem, int64_t i) {
  return static_cast<char*>(problem.out) + i * (problem.out_type == Elem::kBF16 ? 2 : 4);
}

// The bfloat16 scratch of a thread whose scratch starts at `scratch`.
uint16_t* Bfloat16Scratch(const HeadsProblem& problem, float* scratch) {
  return reinterpret_cast<uint16_t*>(
      scratch + RoundUp(ScoreScratchPerThread(*problem.plan, problem.weights), 16));
}

// Adds `mask` at (b, h, i, j0..j0+n) to `row`.
void AddMask(const Mask& mask, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, float* row) {
  const MaskLayout& l = mask.layout;
  const int64_t base = b * l.batch + h * l.head + i * l.row + j0 * l.col;
  if (mask.bools != nullptr) {
    const uint8_t* m = mask.bools + base;
    for (int64_t j = 0; j < n; ++j) {
      if (m[j * l.col]) row[j] = kNegInf;
    }
  } else {
    const float* m = mask.floats + base;
    for (int64_t j = 0; j < n; ++j) row[j] += m[j * l.col];
  }
}

// Keys a tile of query rows [i0, i0 + m) needs: all S, or with causal
// masking those up to its last row, rounded up to kCausalColumnStep.
int64_t KeysNeeded(const HeadsProblem& problem, int64_t i0, int64_t m) {
  const int64_t S = problem.plan->S;
  if (!problem.causal) return S;
  return std::min(S, RoundUp(i0 + m, kCausalColumnStep));
}

// The largest of n floats (-inf for none, or when all are -inf: the row is
// fully masked). std::max_element is one compare at a time, a dependency
// chain: over every score row it cost ~9% of a (1, 2048, 512, 8) call; this
// reduction runs in SIMD lanes. OpenMP leaves the lanes' starting value to
// the compiler (GCC: -inf; clang: -FLT_MAX, which would hide a fully masked
// row), hence `any`: as fast under GCC as the max alone. A NaN anywhere
// gives NaN, so that the row's softmax is NaN as PyTorch's (a row of NaN
// mask values is not a fully masked row).
float RowMax(const float* row, int64_t n) {
  float m = kNegInf;
  int any = 0;  // an element above -inf
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : any, nan)
  for (int64_t j = 0; j < n; ++j) {
    m = m > row[j] ? m : row[j];  // std::max: not vectorized
    any |= row[j] > kNegInf;
    nan |= row[j] != row[j];
  }
  if (nan) return std::numeric_limits<float>::quiet_NaN();
  return any ? m : kNegInf;
}

// Adds every mask to the scores of query row i of head h over keys
// [j0, j0 + n) and returns the row's largest masked score (-inf when all of
// them are masked).
float MaskRow(const HeadsProblem& problem, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n,
              float* row) {
  if (problem.attn_mask) AddMask(*problem.attn_mask, b, h, i, j0, n, row);
  if (problem.key_padding_mask) AddMask(*problem.key_padding_mask, b, h, i, j0, n, row);
  if (problem.causal) std::fill(row + std::clamp<int64_t>(i + 1 - j0, 0, n), row + n, kNegInf);
  return RowMax(row, n);
}

// Softmax of m score rows of n (row stride ld) in place, rows whose max
// (row_max) is -inf becoming zeros; sums[r] (if asked) gets row r's
// denominator. With bfloat16 products the probabilities go to `p16` (row
// stride n) in the same pass, and stay in `p` only with `keep_float32`
// (else `p` holds the unnormalised exponentials).
void Softmax(const HeadsProblem& problem, int64_t m, int64_t n, float* p, int64_t ld,
             const float* row_max, bool keep_float32, uint16_t* p16, float* sums) {
  if (problem.plan->bf16) return SoftmaxRowsToBfloat16(m, n, p, ld, keep_float32, p16, n, sums);
  internal::SoftmaxRows(m, n, ld, p);
  for (int64_t r = 0; r < m; ++r) {
    float* row = p + r * ld;
    const bool empty = row_max[r] == kNegInf;
    if (empty) std::fill(row, row + n, 0.0f);
    // The largest probability is exp(0) / sum.
    if (sums != nullptr) sums[r] = empty ? 0.0f : 1.0f / RowMax(row, n);
  }
}

// P as the P V product reads it: float32 `p` (row stride ld), or the
// bfloat16 `p16` (row stride n) Softmax wrote.
const void* ProductProbabilities(const HeadsProblem& problem, const float* p, int64_t n,
                                 int64_t& ld, const uint16_t* p16) {
  if (!problem.plan->bf16) return p;
  ld = n;
  return p16;
}

// Probabilities of query rows [i0, i0 + m) of head h over keys [j0, j0 + n)
// into `p` (row stride ld; see Softmax for bfloat16 products and `sums`):
// scaled scores, masks, softmax over those n keys. row_max[r] is row r's
// largest masked score; a row whose n keys are all masked has row_max -inf
// and becomes zeros.
void TileProbabilities(const HeadsProblem& problem, int64_t b, int64_t h, int64_t i0, int64_t m,
                       int64_t j0, int64_t n, float* p, int64_t ld, float* row_max, uint16_t* p16,
                       float* sums) {
  const Plan& pl = *problem.plan;
  const int64_t kvh = h / (pl.H / pl.Hkv);
  GemmShape qk;
  qk.a = Mat{m, pl.D, problem.ql.row, 1, Operands(problem)};
  qk.b =
      Mat{pl.D, n, problem.kl.dim, problem.kl.row, Operands(problem)};  // K^T: in place, or packed
  qk.c = Mat{m, n, ld, 1};
  qk.scale = pl.scale;
  Gemm(qk, At(problem, problem.q, b * problem.ql.batch + h * problem.ql.head + i0 * problem.ql.row),
       At(problem, problem.k, b * problem.kl.batch + kvh * problem.kl.head + j0 * problem.kl.row),
       p, nullptr);
  for (int64_t r = 0; r < m; ++r) row_max[r] = MaskRow(problem, b, h, i0 + r, j0, n, p + r * ld);
  Softmax(problem, m, n, p, ld, row_max, problem.weights != WeightsMode::kNone, p16, sums);
}

// out (row stride out_row, of type out_type) = P x V for m query rows of
// head h over keys [j0, j0 + n); P is ProductProbabilities(p, ld, p16).
void ApplyValues(const HeadsProblem& problem, int64_t b, int64_t h, int64_t m, int64_t j0,
                 int64_t n, const float* p, int64_t ld, const uint16_t* p16, void* out,
                 int64_t out_row, Elem out_type) {
  const Plan& pl = *problem.plan;
  const int64_t kvh = h / (pl.H / pl.Hkv);
  const void* a = ProductProbabilities(problem, p, n, ld, p16);
  GemmShape pv;
  pv.a = Mat{m, n, ld, 1, Operands(problem)};
  pv.b = Mat{n, pl.Dv, problem.vl.row, 1, Operands(problem)};
  pv.c = Mat{m, pl.Dv, out_row, 1, out_type};
  Gemm(pv, a,
       At(problem, problem.v, b * problem.vl.batch + kvh * problem.vl.head + j0 * problem.vl.row),
       out, nullptr);
}

void* OutputRows(const HeadsProblem& problem, int64_t b, int64_t h, int64_t i0) {
  return OutputAt(problem, b * problem.ol.batch + h * problem.ol.head + i0 * problem.ol.row);
}

// Query rows [i0, i0 + m) of head h with whole score rows, for calls that
// return attention weights. `scratch` holds kRowTile x S floats (unused for
// per-head weights, whose rows are computed in place in the output).
void AttendRows(const HeadsProblem& problem, int64_t b, int64_t h, int64_t i0, float* scratch) {
  const Plan& p = *problem.plan;
  const int64_t m = std::min(p.row_tile, p.L - i0);
  const int64_t n = KeysNeeded(problem, i0, m);
  float* probs = scratch;
  int64_t ld = n;
  if (problem.weights == WeightsMode::kPerHead) {
    probs = problem.weights_out + ((b * p.H + h) * p.L + i0) * p.S;
    ld = p.S;
  }
  float row_max[kRowTile];
  uint16_t* const p16 = Bfloat16Scratch(problem, scratch);
  TileProbabilities(problem, b, h, i0, m, 0, n, probs, ld, row_max, p16, nullptr);
  if (problem.weights == WeightsMode::kPerHead && n < p.S) {
    for (int64_t r = 0; r < m; ++r) std::fill(probs + r * ld + n, probs + (r + 1) * ld, 0.0f);
  }
  if (problem.weights == WeightsMode::kAveraged) {
    const float inv_h = 1.0f / static_cast<float>(p.H);
    float* avg = problem.weights_out + (b * p.L + i0) * p.S;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < n; ++j) avg[r * p.S + j] += probs[r * ld + j] * inv_h;
    }
  }
  ApplyValues(problem, b, h, m, 0, n, probs, ld, p16, OutputRows(problem, b, h, i0), problem.ol.row,
              problem.out_type);
}

// Query rows [i0, i0 + m) of head h without weights, flash-attention style:
// one tile of keys at a time with an online softmax, so score memory is
// O(kRowTile x kKeyTile) whatever S is (K and V may be packed copies, O(S)),
// and causal masking skips whole tiles.
// For tile t, the softmax gives p_t = exp(s - m_t) / l_t with m_t the
// row's largest score there and l_t its denominator. With the running
// maximum M, denominator Z and unnormalised output O:
//   M' = max(M, m_t), a = exp(M - M'), c = l_t exp(m_t - M'),
//   O' = a O + c (p_t V_t), Z' = a Z + c; the output row is O / Z (zeros
//   when every key was masked: Z = 0).
void AttendRowsFused(const HeadsProblem& problem, int64_t b, int64_t h, int64_t i0,
                     float* scratch) {
  const Plan& p = *problem.plan;
  const int64_t m = std::min(p.row_tile, p.L - i0);
  const int64_t keys = KeysNeeded(problem, i0, m);
  const int64_t dv = p.Dv;
  float* probs = scratch;                    // kRowTile x kKeyTile
  float* acc = probs + kRowTile * kKeyTile;  // kRowTile x Dv
  float* tile_out = acc + kRowTile * dv;     // kRowTile x Dv
  uint16_t* const p16 = Bfloat16Scratch(problem, scratch);
  float run_max[kRowTile], denom[kRowTile], tile_max[kRowTile], tile_sum[kRowTile];
  std::fill_n(run_max, m, kNegInf);
  std::fill_n(denom, m, 0.0f);
  std::fill_n(acc, m * dv, 0.0f);
  for (int64_t j0 = 0; j0 < keys; j0 += kKeyTile) {
    const int64_t n = std::min(kKeyTile, keys - j0);
    TileProbabilities(problem, b, h, i0, m, j0, n, probs, n, tile_max, p16, tile_sum);
    ApplyValues(problem, b, h, m, j0, n, probs, n, p16, tile_out, dv, Elem::kF32);
    for (int64_t r = 0; r < m; ++r) {
      if (tile_max[r] == kNegInf) continue;  // every key of this tile masked
      const float l_t = tile_sum[r];
      const float new_max = std::max(run_max[r], tile_max[r]);
      const float a = run_max[r] == kNegInf ? 0.0f : std::exp(run_max[r] - new_max);
      const float c = l_t * std::exp(tile_max[r] - new_max);
      for (int64_t d = 0; d < dv; ++d) {
        acc[r * dv + d] = a * acc[r * dv + d] + c * tile_out[r * dv + d];
      }
      denom[r] = a * denom[r] + c;
      run_max[r] = new_max;
    }
  }
  void* const out = OutputRows(problem, b, h, i0);
  for (int64_t r = 0; r < m; ++r) {
    const float inv = denom[r] > 0 ? 1.0f / denom[r] : 0.0f;
    float* row = acc + r * dv;
    if (problem.out_type == Elem::kBF16) {
      for (int64_t d = 0; d < dv; ++d) row[d] *= inv;
      RoundToBfloat16(row, dv, static_cast<uint16_t*>(out) + r * problem.ol.row);
    } else {
      float* o = static_cast<float*>(out) + r * problem.ol.row;
      for (int64_t d = 0; d < dv; ++d) o[d] = row[d] * inv;
    }
  }
}

// Query rows [i0, i0 + m) of every head of batch entries [b0, b0 + nb), no
// weights: two batched products over [nb, Hkv, G, m, *] (query head h =
// kv * G + g reads key/value head kv by broadcasting), masks and softmax on
// the nb x H x m score rows in `scratch`.
void AttendBatched(const HeadsProblem& problem, int64_t b0, int64_t nb, int64_t i0,
                   float* scratch) {
  const Plan& p = *problem.plan;
  const int64_t m = std::min(p.row_tile, p.L - i0);
  const int64_t n = KeysNeeded(problem, i0, m);
  const int64_t H = p.H, Hkv = p.Hkv, G = p.H / p.Hkv;
  const HeadLayout &ql = problem.ql, &kl = problem.kl, &vl = problem.vl, &ol = problem.ol;
  // [nb, Hkv, G, rows, cols]; without grouped heads (G = 1) the group
  // dimension is left out, which lets oneDNN pick its faster brgemm kernel.
  const bool bf16 = p.bf16;
  auto view = [G, bf16](std::vector<int64_t> dims, std::vector<int64_t> strides) {
    if (G == 1) {
      dims.erase(dims.begin() + 2);
      strides.erase(strides.begin() + 2);
    }
    // One batch entry: its stride means nothing, but oneDNN 2.6 takes brgemm
    // only for a dense one (rows of a smaller tile would have the stride of
    // the whole sequence's). Float32 products keep their kernel choice.
    if (dims[0] == 1 && bf16) {
      strides[0] = 1;
      for (size_t i = 1; i < dims.size(); ++i)
        strides[0] = std::max(strides[0], dims[i] * strides[i]);
    }
    return internal::BatchMat{std::move(dims), std::move(strides)};
  };
  auto operand = [&](std::vector<int64_t> dims, std::vector<int64_t> strides) {
    internal::BatchMat m = view(std::move(dims), std::move(strides));
    m.type = Operands(problem);
    return m;
  };
  const std::vector<int64_t> score_dims = {nb, Hkv, G, m, n};
  const std::vector<int64_t> score_strides = {Hkv * G * m * n, G * m * n, m * n, n, 1};
  internal::BatchedGemm(operand({nb, Hkv, G, m, p.D}, {ql.batch, G * ql.head, ql.head, ql.row, 1}),
                        operand({nb, Hkv, 1, p.D, n}, {kl.batch, kl.head, p.D * n, 1, kl.row}),
                        view(score_dims, score_strides), p.scale,
                        At(problem, problem.q, b0 * ql.batch + i0 * ql.row),
                        At(problem, problem.k, b0 * kl.batch), scratch);
  const bool masked = problem.causal || problem.attn_mask || problem.key_padding_mask;
  std::vector<int64_t> empty_rows;
  for (int64_t bi = 0; bi < nb && masked; ++bi) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t r = 0; r < m; ++r) {
        const int64_t row = (bi * H + h) * m + r;
        if (MaskRow(problem, b0 + bi, h, i0 + r, 0, n, scratch + row * n) == kNegInf) {
          empty_rows.push_back(row);
        }
      }
    }
  }
  uint16_t* const p16 = Bfloat16Scratch(problem, scratch);
  if (p.bf16) {  // empty rows become zeros there
    SoftmaxRowsToBfloat16(nb * H * m, n, scratch, n, problem.weights == WeightsMode::kAveraged, p16,
                          n, nullptr);
  } else {
    internal::SoftmaxRows(nb * H * m, n, n, scratch);
    for (int64_t row : empty_rows) std::fill_n(scratch + row * n, n, 0.0f);
  }
  if (problem.weights == WeightsMode::kAveraged) {  // the mean over heads, keys past n zero
    const float inv_h = 1.0f / static_cast<float>(H);
    for (int64_t bi = 0; bi < nb; ++bi) {
      for (int64_t r = 0; r < m; ++r) {
        float* avg = problem.weights_out + ((b0 + bi) * p.L + i0 + r) * p.S;
        const float* first = scratch + (bi * H * m + r) * n;
        for (int64_t j = 0; j < n; ++j) avg[j] = first[j] * inv_h;
        for (int64_t h = 1; h < H; ++h) {
          const float* probs = scratch + ((bi * H + h) * m + r) * n;
          for (int64_t j = 0; j < n; ++j) avg[j] += probs[j] * inv_h;
        }
        std::fill(avg + n, avg + p.S, 0.0f);
      }
    }
  }
  int64_t ld = n;
  const void* probs = ProductProbabilities(problem, scratch, n, ld, p16);
  internal::BatchMat out = view({nb, Hkv, G, m, p.Dv}, {ol.batch, G * ol.head, ol.head, ol.row, 1});
  out.type = problem.out_type;
  internal::BatchedGemm(operand(score_dims, score_strides),
                        operand({nb, Hkv, 1, n, p.Dv}, {vl.batch, vl.head, n * p.Dv, vl.row, 1}),
                        out, 1.0f, probs, At(problem, problem.v, b0 * vl.batch),
                        OutputAt(problem, b0 * ol.batch + i0 * ol.row));
}

// Copies every key/value head of `pr` (elements of type T) into contiguous
// blocks, K^T as [B, Hkv, D, S] (rows PackedKeyStride apart) and V as
// [B, Hkv, S, Dv], and points `pr` at them.
template <typename T>
void PackKeysValues(HeadsProblem& problem, T* kt, T* v) {
  const Plan& p = *problem.plan;
  const int64_t S = p.S, D = p.D, Dv = p.Dv, heads = p.B * p.Hkv;
  const int64_t ld = PackedKeyStride(S);
  constexpr int64_t kBlock = 16;  // keys a pass: a cache-friendly transpose
#pragma omp parallel for num_threads(p.threads) schedule(static)
  for (int64_t u = 0; u < heads; ++u) {
    const int64_t b = u / p.Hkv, h = u % p.Hkv;
    const T* ks = static_cast<const T*>(problem.k) + b * problem.kl.batch + h * problem.kl.head;
    const T* vs = static_cast<const T*>(problem.v) + b * problem.vl.batch + h * problem.vl.head;
    T* kd = kt + u * D * ld;
    T* vd = v + u * S * Dv;
    for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
      const int64_t s1 = std::min(S, s0 + kBlock);
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t s = s0; s < s1; ++s) kd[d * ld + s] = ks[s * problem.kl.row + d];
      }
    }
    for (int64_t s = 0; s < S; ++s) std::copy_n(vs + s * problem.vl.row, Dv, vd + s * Dv);
  }
  problem.k = kt;
  problem.kl = {p.Hkv * D * ld, D * ld, 1, ld};
  problem.v = v;
  problem.vl = {p.Hkv * S * Dv, S * Dv, Dv};
}

// Unit of work u of AttendHeads (row tiles a batch entry: `tiles`): a
// group's row tile on the batched path, a head share's row tile with
// averaged weights (into the output's average or `partials`), else one
// head's row tile.
void RunUnit(const HeadsProblem& problem, int64_t u, int64_t tiles, float* partials,
             float* tile_scratch) {
  const Plan& p = *problem.plan;
  const int64_t splits = p.head_splits;
  if (p.group > 0) {
    const int64_t b0 = (u / tiles) * p.group, i0 = (u % tiles) * p.row_tile;
    AttendBatched(problem, b0, std::min(p.group, p.B - b0), i0, tile_scratch);
  } else if (problem.weights == WeightsMode::kAveraged) {
    const int64_t share = u % splits, b = u / splits / tiles;
    const int64_t i0 = (u / splits % tiles) * p.row_tile;
    const int64_t rows = std::min(p.row_tile, p.L - i0);
    HeadsProblem part = problem;  // share 0 sums into the output, others into their partials
    if (share > 0) part.weights_out = partials + (share - 1) * p.B * p.L * p.S;
    std::fill_n(part.weights_out + (b * p.L + i0) * p.S, rows * p.S, 0.0f);
    for (int64_t h = share * p.H / splits; h < (share + 1) * p.H / splits; ++h) {
      AttendRows(part, b, h, i0, tile_scratch);
    }
  } else {
    const int64_t b = u / (p.H * tiles), h = (u / tiles) % p.H;
    const int64_t i0 = (u % tiles) * p.row_tile;
    if (p.fused) {
      AttendRowsFused(problem, b, h, i0, tile_scratch);
    } else {
      AttendRows(problem, b, h, i0, tile_scratch);
    }
  }
}

}  // namespace

std::optional<Mask> PrepareMask(const std::optional<MaskLayout>& layout,
                                std::vector<float>& storage) {
  if (!layout) return std::nullopt;
  Mask m{*layout};
  if (layout->view->dtype == DType::kBool) {
    m.bools = static_cast<const uint8_t*>(layout->view->data);
  } else {
    m.floats = AsFloat32(*layout->view, storage);
  }
  return m;
}

int64_t HeadsFloats(const Plan& plan, WeightsMode weights) {
  const int64_t packed = plan.pack_kv ? Workspace::Round(PackedKeyFloats(plan)) +
                                            Workspace::Round(PackedValueFloats(plan))
                                      : 0;
  return packed + Workspace::Round(PartialAverageFloats(plan)) +
         Workspace::Round(plan.threads * ScratchPerThread(plan, weights));
}

// Runs every (batch, head, row tile) on an OpenMP team; single-threaded oneDNN
// primitives inside. Errors (and the caller's check) stop the remaining units.
absl::Status AttendHeads(HeadsProblem pr, const ComputeOptions& options, Workspace& ws) {
  const Plan& p = *pr.plan;
  if (p.pack_kv) {
    float* kt = ws.Take(PackedKeyFloats(p));
    float* v = ws.Take(PackedValueFloats(p));
    if (p.bf16) {  // half of each block used
      PackKeysValues(pr, reinterpret_cast<uint16_t*>(kt), reinterpret_cast<uint16_t*>(v));
    } else {
      PackKeysValues(pr, kt, v);
    }
  }
  const int64_t tiles = CeilDiv(p.L, p.row_tile);
  const bool averaged = pr.weights == WeightsMode::kAveraged;
  const int64_t groups = p.group > 0 ? CeilDiv(p.B, p.group) : 0;
  const int64_t splits = p.head_splits;
  const int64_t units = p.group > 0 ? groups * tiles
                        : averaged  ? p.B * tiles * splits
                                    : p.B * p.H * tiles;
  float* const partials = splits > 1 ? ws.Take(PartialAverageFloats(p)) : nullptr;
  const int64_t per_thread = ScratchPerThread(p, pr.weights);
  float* const scratch = ws.Take(p.threads * per_thread);
  std::atomic<bool> stop{false};
  std::mutex mu;
  absl::Status first_error;
  auto fail = [&](absl::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_error.ok()) first_error = std::move(s);
    stop = true;
  };
  // Primitives inside run on their calling thread: with a team of one the
  // region is inactive, and oneDNN would otherwise start a nested team.
  OmpThreadsScope single_threaded_primitives(1);
#pragma omp parallel for num_threads(p.threads) schedule(dynamic, 1)
  for (int64_t u = 0; u < units; ++u) {
    if (stop.load(std::memory_order_relaxed)) continue;
    // Nothing may leave an OpenMP region: an error stops the other units.
    absl::Status s = GuardStatus([&] {
      if (options.check) {
        if (absl::Status c = options.check(); !c.ok()) return c;
      }
      RunUnit(pr, u, tiles, partials,
              scratch == nullptr ? nullptr : scratch + omp_get_thread_num() * per_thread);
      return absl::OkStatus();
    });
    if (!s.ok()) fail(std::move(s));
  }
  if (partials != nullptr && first_error.ok()) {
    const int64_t n = p.B * p.L * p.S;
#pragma omp parallel for num_threads(p.threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t share = 1; share < splits; ++share) {
        pr.weights_out[i] += partials[(share - 1) * n + i];
      }
    }
  }
  return first_error;
}

}  // namespace internal
}  // namespace attention
