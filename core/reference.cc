#include "core/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace attention {
namespace {

std::vector<double> ToDouble(const TensorView& t) {
  std::vector<float> f(ShapeProduct(t.shape));
  ConvertToFloat32(t, f.data());
  return std::vector<double>(f.begin(), f.end());
}

// y[r][o] = sum_c x[r][c] * w[o][c] + bias[o]   (x: rows x in, w: out x in)
std::vector<double> Linear(const std::vector<double>& x, int64_t rows, int64_t in,
                           const std::vector<double>& w, int64_t out, const double* bias) {
  std::vector<double> y(rows * out);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias ? bias[o] : 0.0;
      for (int64_t c = 0; c < in; ++c) acc += x[r * in + c] * w[o * in + c];
      y[r * out + o] = acc;
    }
  }
  return y;
}

// The value a mask adds at (b, h, i, j) of [B, H, L, S]: -inf for a true
// BOOL, the number for a float mask. Broadcasting as PyTorch does.
double MaskAt(const std::vector<double>& m, const TensorView& t, bool batched, int64_t B, int64_t H,
              int64_t L, int64_t S, int64_t b, int64_t h, int64_t i, int64_t j, bool key_padding) {
  const std::vector<int64_t>& d = t.shape;
  int64_t index;
  if (key_padding) {
    index = batched ? b * S + j : j;
  } else if (d.size() == 2) {
    index = i * S + j;
  } else if (d.size() == 3) {
    index = ((b * H + h) * L + i) * S + j;
  } else {
    const int64_t at[4] = {b, h, i, j};
    index = 0;
    for (int k = 0; k < 4; ++k) index = index * d[k] + (d[k] == 1 ? 0 : at[k]);
  }
  (void)B;
  if (t.dtype == DType::kBool) {
    return m[index] != 0.0 ? -std::numeric_limits<double>::infinity() : 0.0;
  }
  return m[index];
}

}  // namespace

absl::StatusOr<ReferenceResult> ReferenceAttention(const AttentionArgs& a) {
  ComputeOptions unlimited;
  unlimited.max_memory_bytes = std::numeric_limits<int64_t>::max();
  absl::StatusOr<AttentionPlanInfo> info = PlanAttention(a, unlimited);
  if (!info.ok()) return info.status();

  const TensorView& qv = a.query;
  const TensorView& kv = a.self_attention ? a.query : *a.key;
  const TensorView& vv = a.self_attention ? a.query : *a.value;
  const int rank = static_cast<int>(qv.shape.size());
  const bool batched = rank != 2;
  std::vector<double> q = ToDouble(qv), k = ToDouble(kv), v = ToDouble(vv);

  // Bring everything to [B][H][L][D] (q), [B][Hkv][S][D] (k), [B][Hkv][S][Dv] (v).
  int64_t B, H, Hkv, L, S, D, Dv;
  std::vector<double> Q, K, V;
  const ProjectionWeights* pw = a.projection;
  if (rank == 4) {
    B = qv.shape[0], H = qv.shape[1], L = qv.shape[2], D = qv.shape[3];
    Hkv = kv.shape[1], S = kv.shape[2], Dv = vv.shape[3];
    Q = q, K = k, V = v;
  } else {
    B = batched ? qv.shape[0] : 1;
    L = qv.shape[rank - 2];
    S = kv.shape[rank - 2];
    const int64_t Eq = qv.shape.back(), Ek = kv.shape.back(), Ev = vv.shape.back();
    H = a.num_heads;
    if (pw != nullptr) {
      const int64_t E = pw->out_proj_weight->shape[0];
      std::vector<double> wq, wk, wv, bias;
      if (pw->in_proj_weight) {
        std::vector<double> w = ToDouble(*pw->in_proj_weight);
        wq.assign(w.begin(), w.begin() + E * E);
        wk.assign(w.begin() + E * E, w.begin() + 2 * E * E);
        wv.assign(w.begin() + 2 * E * E, w.end());
      } else {
        wq = ToDouble(*pw->q_proj_weight);
        wk = ToDouble(*pw->k_proj_weight);
        wv = ToDouble(*pw->v_proj_weight);
      }
      if (pw->in_proj_bias) bias = ToDouble(*pw->in_proj_bias);
      const double* b0 = bias.empty() ? nullptr : bias.data();
      q = Linear(q, B * L, Eq, wq, E, b0);
      k = Linear(k, B * S, Ek, wk, E, b0 ? b0 + E : nullptr);
      v = Linear(v, B * S, Ev, wv, E, b0 ? b0 + 2 * E : nullptr);
      Hkv = H;
      D = Dv = E / H;
    } else {
      Hkv = a.num_kv_heads ? a.num_kv_heads : H;
      D = Eq / H;
      Dv = Ev / Hkv;
    }
    Q.resize(B * H * L * D);
    K.resize(B * Hkv * S * D);
    V.resize(B * Hkv * S * Dv);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < L; ++i) {
          for (int64_t d = 0; d < D; ++d) {
            Q[((b * H + h) * L + i) * D + d] = q[(b * L + i) * H * D + h * D + d];
          }
        }
      }
      for (int64_t h = 0; h < Hkv; ++h) {
        for (int64_t j = 0; j < S; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            K[((b * Hkv + h) * S + j) * D + d] = k[(b * S + j) * Hkv * D + h * D + d];
          }
          for (int64_t d = 0; d < Dv; ++d) {
            V[((b * Hkv + h) * S + j) * Dv + d] = v[(b * S + j) * Hkv * Dv + h * Dv + d];
          }
        }
      }
    }
  }

  const double scale = a.scale ? *a.scale : 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> am, kpm;
  if (a.attn_mask) am = ToDouble(*a.attn_mask);
  if (a.key_padding_mask) kpm = ToDouble(*a.key_padding_mask);
  const double inf = std::numeric_limits<double>::infinity();

  std::vector<double> O(B * H * L * Dv, 0.0);  // [B][H][L][Dv]
  std::vector<double> P(B * H * L * S, 0.0);   // [B][H][L][S]
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> s(S);
        double mx = -inf;
        for (int64_t j = 0; j < S; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += Q[((b * H + h) * L + i) * D + d] * K[((b * Hkv + g) * S + j) * D + d];
          }
          s[j] = dot * scale;
          if (a.causal && j > i) s[j] = -inf;
          if (a.attn_mask) s[j] += MaskAt(am, *a.attn_mask, batched, B, H, L, S, b, h, i, j, false);
          if (a.key_padding_mask) {
            s[j] += MaskAt(kpm, *a.key_padding_mask, batched, B, H, L, S, b, h, i, j, true);
          }
          mx = std::max(mx, s[j]);
        }
        if (mx == -inf) continue;  // every key masked: zeros
        double sum = 0;
        for (int64_t j = 0; j < S; ++j) sum += std::exp(s[j] - mx);
        for (int64_t j = 0; j < S; ++j) {
          const double p = std::exp(s[j] - mx) / sum;
          P[((b * H + h) * L + i) * S + j] = p;
          for (int64_t d = 0; d < Dv; ++d) {
            O[((b * H + h) * L + i) * Dv + d] += p * V[((b * Hkv + g) * S + j) * Dv + d];
          }
        }
      }
    }
  }

  ReferenceResult r;
  r.output_shape = info->output_shape;
  r.weights_shape = info->weights_shape;
  if (rank == 4) {
    r.output = O;
  } else {
    std::vector<double> concat(B * L * H * Dv);  // [B][L][H*Dv]
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < L; ++i) {
          for (int64_t d = 0; d < Dv; ++d) {
            concat[(b * L + i) * H * Dv + h * Dv + d] = O[((b * H + h) * L + i) * Dv + d];
          }
        }
      }
    }
    if (pw != nullptr) {
      const int64_t E = H * Dv;
      std::vector<double> bias;
      if (pw->out_proj_bias) bias = ToDouble(*pw->out_proj_bias);
      r.output = Linear(concat, B * L, E, ToDouble(*pw->out_proj_weight), E,
                        bias.empty() ? nullptr : bias.data());
    } else {
      r.output = std::move(concat);
    }
  }
  if (a.weights == WeightsMode::kPerHead) {
    r.weights = P;
  } else if (a.weights == WeightsMode::kAveraged) {
    r.weights.assign(B * L * S, 0.0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < L; ++i) {
          for (int64_t j = 0; j < S; ++j) {
            r.weights[(b * L + i) * S + j] += P[((b * H + h) * L + i) * S + j] / H;
          }
        }
      }
    }
  }
  return r;
}

double RelativeMaxError(const float* got, const std::vector<double>& want) {
  double max_diff = 0, max_want = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    max_diff =
        std::isnan(diff) ? std::numeric_limits<double>::infinity() : std::max(max_diff, diff);
    max_want = std::max(max_want, std::fabs(want[i]));
  }
  return max_diff / std::max(max_want, 1e-30);
}

}  // namespace attention
