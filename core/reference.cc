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

// The request's tensors as [B][H][L][D] (Q), [B][Hkv][S][D] (K) and
// [B][Hkv][S][Dv] (V), after the in-projection when there is one.
struct Heads {
  int64_t B, H, Hkv, L, S, D, Dv;
  std::vector<double> Q, K, V;
};

// A mask's value at (b, h, i, j) of [B, H, L, S]: -inf for a true BOOL, the
// number for a float mask. Broadcasting as PyTorch does.
double MaskAt(const std::vector<double>& mask, const TensorView& t, const Heads& x, bool batched,
              int64_t b, int64_t h, int64_t i, int64_t j, bool key_padding) {
  const std::vector<int64_t>& d = t.shape;
  int64_t index;
  if (key_padding) {
    index = batched ? b * x.S + j : j;
  } else if (d.size() == 2) {
    index = i * x.S + j;
  } else if (d.size() == 3) {
    index = ((b * x.H + h) * x.L + i) * x.S + j;
  } else {
    const int64_t at[4] = {b, h, i, j};
    index = 0;
    for (int k = 0; k < 4; ++k) index = index * d[k] + (d[k] == 1 ? 0 : at[k]);
  }
  if (t.dtype == DType::kBool) {
    return mask[index] != 0.0 ? -std::numeric_limits<double>::infinity() : 0.0;
  }
  return mask[index];
}

// q, k, v ([B*L, E] rows) through the in-projection of `weights`; sets E.
void Project(const ProjectionWeights& weights, Heads* x, std::vector<double>* q,
             std::vector<double>* k, std::vector<double>* v, int64_t Eq, int64_t Ek, int64_t Ev) {
  const int64_t E = weights.out_proj_weight->shape[0];
  std::vector<double> wq, wk, wv, bias;
  if (weights.in_proj_weight) {
    std::vector<double> w = ToDouble(*weights.in_proj_weight);
    wq.assign(w.begin(), w.begin() + E * E);
    wk.assign(w.begin() + E * E, w.begin() + 2 * E * E);
    wv.assign(w.begin() + 2 * E * E, w.end());
  } else {
    wq = ToDouble(*weights.q_proj_weight);
    wk = ToDouble(*weights.k_proj_weight);
    wv = ToDouble(*weights.v_proj_weight);
  }
  if (weights.in_proj_bias) bias = ToDouble(*weights.in_proj_bias);
  const double* b0 = bias.empty() ? nullptr : bias.data();
  *q = Linear(*q, x->B * x->L, Eq, wq, E, b0);
  *k = Linear(*k, x->B * x->S, Ek, wk, E, b0 ? b0 + E : nullptr);
  *v = Linear(*v, x->B * x->S, Ev, wv, E, b0 ? b0 + 2 * E : nullptr);
  x->Hkv = x->H;
  x->D = x->Dv = E / x->H;
}

// The heads of `args`' tensors (rank 4: as they are; otherwise split from
// [B, L, E] rows, projected first when there are weights).
Heads SplitHeads(const AttentionArgs& args) {
  const TensorView& qv = args.query;
  const TensorView& kv = args.self_attention ? args.query : *args.key;
  const TensorView& vv = args.self_attention ? args.query : *args.value;
  const int rank = static_cast<int>(qv.shape.size());
  std::vector<double> q = ToDouble(qv), k = ToDouble(kv), v = ToDouble(vv);
  Heads x;
  if (rank == 4) {
    x.B = qv.shape[0], x.H = qv.shape[1], x.L = qv.shape[2], x.D = qv.shape[3];
    x.Hkv = kv.shape[1], x.S = kv.shape[2], x.Dv = vv.shape[3];
    x.Q = std::move(q), x.K = std::move(k), x.V = std::move(v);
    return x;
  }
  x.B = rank != 2 ? qv.shape[0] : 1;
  x.L = qv.shape[rank - 2];
  x.S = kv.shape[rank - 2];
  x.H = args.num_heads;
  const int64_t Eq = qv.shape.back(), Ek = kv.shape.back(), Ev = vv.shape.back();
  if (args.projection != nullptr) {
    Project(*args.projection, &x, &q, &k, &v, Eq, Ek, Ev);
  } else {
    x.Hkv = args.num_kv_heads ? args.num_kv_heads : x.H;
    x.D = Eq / x.H;
    x.Dv = Ev / x.Hkv;
  }
  const int64_t B = x.B, H = x.H, Hkv = x.Hkv, L = x.L, S = x.S, D = x.D, Dv = x.Dv;
  x.Q.resize(B * H * L * D);
  x.K.resize(B * Hkv * S * D);
  x.V.resize(B * Hkv * S * Dv);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        for (int64_t d = 0; d < D; ++d) {
          x.Q[((b * H + h) * L + i) * D + d] = q[(b * L + i) * H * D + h * D + d];
        }
      }
    }
    for (int64_t h = 0; h < Hkv; ++h) {
      for (int64_t j = 0; j < S; ++j) {
        for (int64_t d = 0; d < D; ++d) {
          x.K[((b * Hkv + h) * S + j) * D + d] = k[(b * S + j) * Hkv * D + h * D + d];
        }
        for (int64_t d = 0; d < Dv; ++d) {
          x.V[((b * Hkv + h) * S + j) * Dv + d] = v[(b * S + j) * Hkv * Dv + h * Dv + d];
        }
      }
    }
  }
  return x;
}

// Attention of every head: the outputs O [B][H][L][Dv] and the
// probabilities P [B][H][L][S]; a row whose keys are all masked stays zero.
void Attend(const AttentionArgs& args, const Heads& x, std::vector<double>* O,
            std::vector<double>* P) {
  const bool batched = args.query.shape.size() != 2;
  const double scale = args.scale ? *args.scale : 1.0 / std::sqrt(static_cast<double>(x.D));
  std::vector<double> am, kpm;
  if (args.attn_mask) am = ToDouble(*args.attn_mask);
  if (args.key_padding_mask) kpm = ToDouble(*args.key_padding_mask);
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t H = x.H, Hkv = x.Hkv, L = x.L, S = x.S, D = x.D, Dv = x.Dv;
  O->assign(x.B * H * L * Dv, 0.0);
  P->assign(x.B * H * L * S, 0.0);
  for (int64_t b = 0; b < x.B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> s(S);
        double mx = -inf;
        bool nan = false;  // a NaN score (a NaN mask value): the row is NaN, as in PyTorch
        for (int64_t j = 0; j < S; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += x.Q[((b * H + h) * L + i) * D + d] * x.K[((b * Hkv + g) * S + j) * D + d];
          }
          s[j] = dot * scale;
          if (args.causal && j > i) s[j] = -inf;
          if (args.attn_mask) s[j] += MaskAt(am, *args.attn_mask, x, batched, b, h, i, j, false);
          if (args.key_padding_mask) {
            s[j] += MaskAt(kpm, *args.key_padding_mask, x, batched, b, h, i, j, true);
          }
          mx = std::max(mx, s[j]);
          nan |= std::isnan(s[j]);
        }
        if (mx == -inf && !nan) continue;  // every key masked: zeros
        double sum = 0;
        for (int64_t j = 0; j < S; ++j) sum += std::exp(s[j] - mx);
        for (int64_t j = 0; j < S; ++j) {
          const double p = std::exp(s[j] - mx) / sum;
          (*P)[((b * H + h) * L + i) * S + j] = p;
          for (int64_t d = 0; d < Dv; ++d) {
            (*O)[((b * H + h) * L + i) * Dv + d] += p * x.V[((b * Hkv + g) * S + j) * Dv + d];
          }
        }
      }
    }
  }
}

// The heads' outputs concatenated to [B][L][H*Dv], through the
// out-projection when there are weights.
std::vector<double> MergeHeads(const AttentionArgs& args, const Heads& x,
                               const std::vector<double>& O) {
  const int64_t B = x.B, H = x.H, L = x.L, Dv = x.Dv;
  std::vector<double> concat(B * L * H * Dv);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        for (int64_t d = 0; d < Dv; ++d) {
          concat[(b * L + i) * H * Dv + h * Dv + d] = O[((b * H + h) * L + i) * Dv + d];
        }
      }
    }
  }
  const ProjectionWeights* weights = args.projection;
  if (weights == nullptr) return concat;
  const int64_t E = H * Dv;
  std::vector<double> bias;
  if (weights->out_proj_bias) bias = ToDouble(*weights->out_proj_bias);
  return Linear(concat, B * L, E, ToDouble(*weights->out_proj_weight), E,
                bias.empty() ? nullptr : bias.data());
}

// The mean over heads of P [B][H][L][S]: [B][L][S].
std::vector<double> AverageOverHeads(const Heads& x, const std::vector<double>& P) {
  std::vector<double> mean(x.B * x.L * x.S, 0.0);
  for (int64_t b = 0; b < x.B; ++b) {
    for (int64_t h = 0; h < x.H; ++h) {
      for (int64_t i = 0; i < x.L; ++i) {
        for (int64_t j = 0; j < x.S; ++j) {
          mean[(b * x.L + i) * x.S + j] += P[((b * x.H + h) * x.L + i) * x.S + j] / x.H;
        }
      }
    }
  }
  return mean;
}

}  // namespace

absl::StatusOr<ReferenceResult> ReferenceAttention(const AttentionArgs& args) {
  ComputeOptions unlimited;
  unlimited.max_memory_bytes = std::numeric_limits<int64_t>::max();
  absl::StatusOr<AttentionPlanInfo> info = PlanAttention(args, unlimited);
  if (!info.ok()) return info.status();
  const Heads heads = SplitHeads(args);
  std::vector<double> O, P;
  Attend(args, heads, &O, &P);
  ReferenceResult result;
  result.output_shape = info->output_shape;
  result.weights_shape = info->weights_shape;
  result.output = args.query.shape.size() == 4 ? O : MergeHeads(args, heads, O);
  if (args.weights == WeightsMode::kPerHead) {
    result.weights = std::move(P);
  } else if (args.weights == WeightsMode::kAveraged) {
    result.weights = AverageOverHeads(heads, P);
  }
  return result;
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
