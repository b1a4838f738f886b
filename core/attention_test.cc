// The optimized core against the naive double-precision reference on a
// randomized grid of cases, every validation error, and concurrent calls.
#include "core/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/attention_plan.h"
#include "core/onednn_ops.h"
#include "core/reference.h"
#include "core/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using ::testing::HasSubstr;
using testing::RandomTensor;

// A random call and the storage its views point into.
struct RandomCase {
  std::string description;
  std::vector<FloatTensor> floats;
  std::vector<std::vector<uint8_t>> bools;
  std::vector<std::vector<uint16_t>> halves;
  ProjectionWeights projection;
  AttentionArgs args;

  TensorView Keep(FloatTensor t, DType wire = DType::kFloat32) {
    floats.push_back(std::move(t));
    const FloatTensor& f = floats.back();
    if (wire == DType::kFloat32) return f.view();
    std::vector<uint16_t>& h = halves.emplace_back(f.data.size());
    ConvertFromFloat32(f.data.data(), f.data.size(), wire, h.data());
    return {wire, f.shape, h.data(), h.size() * 2};
  }
};

template <typename T>
T Pick(std::mt19937& rng, std::initializer_list<T> values) {
  std::uniform_int_distribution<size_t> d(0, values.size() - 1);
  return *(values.begin() + d(rng));
}

bool Chance(std::mt19937& rng, double p) { return std::bernoulli_distribution(p)(rng); }

TensorView MakeMask(RandomCase& c, const std::vector<int64_t>& shape, bool as_bool,
                    std::mt19937& rng) {
  const int64_t n = ShapeProduct(shape);
  if (as_bool) {
    std::vector<uint8_t>& m = c.bools.emplace_back(n);
    const double p = Pick(rng, {0.1, 0.5, 0.9});
    for (auto& x : m) x = Chance(rng, p);
    return {DType::kBool, shape, m.data(), m.size()};
  }
  FloatTensor t = RandomTensor(shape, rng, 2.0f);
  for (float& x : t.data) {
    if (Chance(rng, 0.2)) x = -std::numeric_limits<float>::infinity();
  }
  return c.Keep(std::move(t));
}

// Draws a case; the storage vectors are reserved so views stay valid.
void MakeRandomCase(int seed, RandomCase& c) {
  std::mt19937 rng(seed);
  c.floats.reserve(16);
  c.bools.reserve(4);
  c.halves.reserve(16);
  AttentionArgs& a = c.args;
  const int rank = Pick(rng, {2, 3, 3, 3, 4});
  const int proj = rank == 4 ? 0 : Pick(rng, {0, 0, 1, 2});  // none, packed, separate
  a.self_attention = proj != 2 && Chance(rng, 0.4);
  const int64_t B = rank == 2 ? 1 : Pick<int64_t>(rng, {1, 2, 3});
  const int64_t L = Pick<int64_t>(rng, {1, 3, 7, 17, 64, 65, 100, 260});
  const int64_t S = a.self_attention ? L : Pick<int64_t>(rng, {1, 5, 9, 31, 64, 70, 130, 300, 520});
  const int64_t H = Pick<int64_t>(rng, {1, 2, 4});
  const int64_t Hkv = proj ? H : Pick<int64_t>(rng, {H, 1, std::max<int64_t>(1, H / 2)});
  const int64_t D = Pick<int64_t>(rng, {4, 8, 16});
  const int64_t Dv = (proj || a.self_attention) ? D : Pick<int64_t>(rng, {D, 4, 12});
  const int64_t E = H * D;
  const DType dtype = Pick(
      rng, {DType::kFloat32, DType::kFloat32, DType::kFloat32, DType::kFloat16, DType::kBFloat16});
  auto shaped = [&](int64_t rows, int64_t heads, int64_t dim) -> std::vector<int64_t> {
    if (rank == 4) return {B, heads, rows, dim};
    if (rank == 2) return {rows, heads * dim};
    return {B, rows, heads * dim};
  };
  auto embedded = [&](int64_t rows, int64_t dim) -> std::vector<int64_t> {
    if (rank == 2) return {rows, dim};
    return {B, rows, dim};
  };
  int64_t kdim = E, vdim = E;
  if (proj) {
    a.query = c.Keep(RandomTensor(embedded(L, E), rng), dtype);
    if (proj == 2) {
      kdim = Pick<int64_t>(rng, {E, 6, 20});
      vdim = Pick<int64_t>(rng, {E, 5, 12});
    }
    if (!a.self_attention) {
      a.key = c.Keep(RandomTensor(embedded(S, kdim), rng), dtype);
      a.value = c.Keep(RandomTensor(embedded(S, vdim), rng), dtype);
    }
    const float ws = 1.0f / std::sqrt(static_cast<float>(E));
    ProjectionWeights& p = c.projection;
    const bool bias = Chance(rng, 0.7);
    if (proj == 1) {
      p.in_proj_weight = c.Keep(RandomTensor({3 * E, E}, rng, ws));
    } else {
      p.q_proj_weight = c.Keep(RandomTensor({E, E}, rng, ws));
      p.k_proj_weight = c.Keep(RandomTensor({E, kdim}, rng, ws));
      p.v_proj_weight = c.Keep(RandomTensor({E, vdim}, rng, ws));
    }
    if (bias) p.in_proj_bias = c.Keep(RandomTensor({3 * E}, rng));
    p.out_proj_weight = c.Keep(RandomTensor({E, E}, rng, ws));
    if (bias) p.out_proj_bias = c.Keep(RandomTensor({E}, rng));
    a.projection = &p;
  } else {
    a.query = c.Keep(RandomTensor(shaped(L, H, D), rng), dtype);
    if (!a.self_attention) {
      a.key = c.Keep(RandomTensor(shaped(S, Hkv, D), rng), dtype);
      a.value = c.Keep(RandomTensor(shaped(S, Hkv, Dv), rng), dtype);
    } else if (Hkv != H) {
      // Self-attention shares one tensor: key heads = query heads.
    }
  }
  a.num_heads = (rank == 4 && Chance(rng, 0.5)) ? 0 : H;
  a.num_kv_heads = (a.self_attention || proj) ? 0 : (Chance(rng, 0.5) && rank == 4 ? 0 : Hkv);
  if (a.self_attention && !proj) a.num_kv_heads = 0;
  if (Chance(rng, 0.2)) a.scale = Pick(rng, {0.05f, 0.3f, 1.0f});
  a.causal = Chance(rng, 0.3);
  switch (Pick(rng, {0, 0, 1, 2, 3, 4})) {
    case 1:
      a.attn_mask = MakeMask(c, {L, S}, Chance(rng, 0.5), rng);
      break;
    case 2:
      a.attn_mask = MakeMask(c, {B * H, L, S}, Chance(rng, 0.5), rng);
      break;
    case 3:
      a.attn_mask = MakeMask(c, {B, 1, 1, S}, Chance(rng, 0.5), rng);
      break;
    case 4:
      a.attn_mask = MakeMask(c, {1, H, L, S}, Chance(rng, 0.5), rng);
      break;
  }
  if (Chance(rng, 0.3)) {
    a.key_padding_mask = MakeMask(
        c, rank == 2 ? std::vector<int64_t>{S} : std::vector<int64_t>{B, S}, Chance(rng, 0.5), rng);
  }
  a.weights = Pick(rng, {WeightsMode::kNone, WeightsMode::kAveraged, WeightsMode::kPerHead});
  c.description = absl::StrCat(
      "seed=", seed, " rank=", rank, " proj=", proj, " self=", a.self_attention, " B=", B, " L=", L,
      " S=", S, " H=", H, " Hkv=", Hkv, " D=", D, " Dv=", Dv, " kdim=", kdim, " vdim=", vdim,
      " dtype=", DTypeName(dtype), " causal=", a.causal,
      " attn_mask=", a.attn_mask ? ShapeString(a.attn_mask->shape) : "-",
      " kpm=", a.key_padding_mask ? "yes" : "no", " weights=", static_cast<int>(a.weights));
}

constexpr int kRandomCases = 400;

// Outputs whose buffers start as NaN, like the server's uninitialized ones:
// an element the core does not write shows up as an error.
class PoisonedOutputs final : public OutputBuffers {
 public:
  float* Output(const std::vector<int64_t>& shape) override { return Poison(shape, &output); }
  float* Weights(const std::vector<int64_t>& shape) override { return Poison(shape, &weights); }

  FloatTensor output, weights;

 private:
  static float* Poison(const std::vector<int64_t>& shape, FloatTensor* t) {
    const int64_t n = ShapeProduct(shape);
    t->shape = shape;
    t->data.assign(n, std::numeric_limits<float>::quiet_NaN());
    return t->data.data();
  }
};

TEST(AttentionVsReference, RandomizedGrid) {
  for (int seed = 0; seed < kRandomCases; ++seed) {
    RandomCase c;
    MakeRandomCase(seed, c);
    SCOPED_TRACE(c.description);
    absl::StatusOr<ReferenceResult> want = ReferenceAttention(c.args);
    ASSERT_TRUE(want.ok()) << want.status();
    PoisonedOutputs got;
    ComputeOptions options;
    options.max_threads = 1 + seed % 2;
    options.fused_min_keys = seed % 3 == 0 ? 16384 : 1;    // both paths without weights
    options.pack_min_keys = seed / 2 % 2 == 0 ? 2048 : 1;  // K^T, V read in place or packed
    std::shared_ptr<const PreparedProjection> prepared;
    if (c.args.projection != nullptr && seed % 5 < 3) {  // as a model's weights are
      absl::StatusOr<std::shared_ptr<const PreparedProjection>> p = PrepareProjection(c.projection);
      ASSERT_TRUE(p.ok()) << p.status();
      prepared = *p;
      c.projection.prepared = prepared.get();
    }
    ASSERT_TRUE(ComputeAttention(c.args, options, &got).ok());
    ASSERT_EQ(got.output.shape, want->output_shape);
    EXPECT_LE(RelativeMaxError(got.output.data.data(), want->output), 2e-5);
    ASSERT_EQ(got.weights.shape, want->weights_shape);
    if (!want->weights.empty()) {
      EXPECT_LE(RelativeMaxError(got.weights.data.data(), want->weights), 2e-5);
    }
  }
}

// Bfloat16 products on every path of the grid: what a rounding error of
// bfloat16 operands allows (a wrong path or layout is off by O(1)). The
// bound that holds the path to PyTorch's own bfloat16 error is in
// pytorch_fixtures_test.cc.
TEST(AttentionBfloat16, RandomizedGrid) {
  if (EffectivePrecision(Precision::kBFloat16) != Precision::kBFloat16) {
    GTEST_SKIP() << "no bfloat16 instructions on this CPU";
  }
  double worst = 0;
  for (int seed = 0; seed < kRandomCases; seed += 2) {
    RandomCase c;
    MakeRandomCase(seed, c);
    c.args.precision = Precision::kBFloat16;
    SCOPED_TRACE(c.description);
    absl::StatusOr<ReferenceResult> want = ReferenceAttention(c.args);
    ASSERT_TRUE(want.ok()) << want.status();
    PoisonedOutputs got;
    ComputeOptions options;
    options.max_threads = 1 + seed / 2 % 2;
    options.fused_min_keys = seed % 3 == 0 ? 16384 : 1;
    options.pack_min_keys = seed / 4 % 2 == 0 ? 2048 : 1;
    std::shared_ptr<const PreparedProjection> prepared;
    if (c.args.projection != nullptr && seed % 5 < 3) {
      absl::StatusOr<std::shared_ptr<const PreparedProjection>> p = PrepareProjection(c.projection);
      ASSERT_TRUE(p.ok()) << p.status();
      prepared = *p;
      c.projection.prepared = prepared.get();
    }
    absl::StatusOr<AttentionPlanInfo> plan = PlanAttention(c.args, options);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->precision, Precision::kBFloat16);
    ASSERT_TRUE(ComputeAttention(c.args, options, &got).ok());
    ASSERT_EQ(got.output.shape, want->output_shape);
    const double e = RelativeMaxError(got.output.data.data(), want->output);
    worst = std::max(worst, e);
    EXPECT_LE(e, 2e-2);
    ASSERT_EQ(got.weights.shape, want->weights_shape);
    if (!want->weights.empty()) {
      EXPECT_LE(RelativeMaxError(got.weights.data.data(), want->weights), 2e-2);
    }
  }
  std::printf("worst bfloat16 relative error on the grid: %.3g\n", worst);
}

// One batch entry of short heads on two threads: the bfloat16 path batches
// the heads over row tiles smaller than kRowTile (a tile a thread), with
// grouped-query heads, causal and padding masks, and averaged weights.
TEST(AttentionBfloat16, OneBatchEntrySplitsItsRowsBetweenThreads) {
  if (EffectivePrecision(Precision::kBFloat16) != Precision::kBFloat16) {
    GTEST_SKIP() << "no bfloat16 instructions on this CPU";
  }
  std::mt19937 rng(11);
  const int64_t L = 100, S = 90, H = 8, Hkv = 2, D = 32;
  FloatTensor q = RandomTensor({1, H, L, D}, rng), k = RandomTensor({1, Hkv, S, D}, rng),
              v = RandomTensor({1, Hkv, S, D}, rng);
  std::vector<uint8_t> padding(S, 0);
  for (int64_t j = 70; j < S; ++j) padding[j] = 1;
  for (WeightsMode weights : {WeightsMode::kNone, WeightsMode::kAveraged}) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "causal " << causal << " weights " << static_cast<int>(weights));
      AttentionArgs a;
      a.query = q.view();
      a.key = k.view();
      a.value = v.view();
      a.num_heads = H;
      a.num_kv_heads = Hkv;
      a.causal = causal;
      a.weights = weights;
      a.precision = Precision::kBFloat16;
      a.key_padding_mask = TensorView{DType::kBool, {1, S}, padding.data(), padding.size()};
      ComputeOptions options;
      options.max_threads = 2;
      options.fused_min_keys = 16384;
      absl::StatusOr<internal::Plan> plan = internal::MakePlan(a, options);
      ASSERT_TRUE(plan.ok()) << plan.status();
      ASSERT_GT(plan->group, 0);
      ASSERT_LT(plan->row_tile, L);
      absl::StatusOr<ReferenceResult> want = ReferenceAttention(a);
      ASSERT_TRUE(want.ok()) << want.status();
      PoisonedOutputs got;
      ASSERT_TRUE(ComputeAttention(a, options, &got).ok());
      EXPECT_LE(RelativeMaxError(got.output.data.data(), want->output), 2e-2);
      if (weights == WeightsMode::kAveraged) {
        EXPECT_LE(RelativeMaxError(got.weights.data.data(), want->weights), 2e-2);
      }
    }
  }
}

// A PreparedProjection made from other weights (same shapes) is not used:
// the call computes from the weights it is given.
TEST(AttentionVsReference, PreparedWeightsOfOtherDataAreIgnored) {
  RandomCase c;
  int seed = 0;
  do {
    c = RandomCase();
    MakeRandomCase(seed++, c);
  } while (c.args.projection == nullptr || !c.projection.in_proj_weight ||
           c.projection.in_proj_weight->dtype != DType::kFloat32);
  SCOPED_TRACE(c.description);
  std::mt19937 rng(5);
  const TensorView& in_w = *c.projection.in_proj_weight;
  const TensorView& out_w = *c.projection.out_proj_weight;
  FloatTensor other_in = RandomTensor(in_w.shape, rng), other_out = RandomTensor(out_w.shape, rng);
  ProjectionWeights other = c.projection;
  other.in_proj_weight = other_in.view();
  other.out_proj_weight = other_out.view();
  absl::StatusOr<std::shared_ptr<const PreparedProjection>> wrong = PrepareProjection(other);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  c.projection.prepared = wrong->get();
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(c.args);
  ASSERT_TRUE(want.ok()) << want.status();
  VectorOutputs got;
  ASSERT_TRUE(ComputeAttention(c.args, {}, &got).ok());
  EXPECT_LE(RelativeMaxError(got.output.data.data(), want->output), 2e-5);
}

// Long enough for K^T and V to be packed (4+ row tiles) in the projected
// layouts too: packed self-attention rows (stride 3E) and separate K and V
// projections (kdim, vdim other than E).
TEST(AttentionVsReference, PackedKeysAndValuesOfProjectedHeads) {
  std::mt19937 rng(11);
  const int64_t L = 520, S = 530, E = 32;
  FloatTensor x = RandomTensor({1, L, E}, rng);
  FloatTensor k = RandomTensor({1, S, 6}, rng), v = RandomTensor({1, S, 12}, rng);
  FloatTensor in_w = RandomTensor({3 * E, E}, rng, 0.2f), in_b = RandomTensor({3 * E}, rng);
  FloatTensor q_w = RandomTensor({E, E}, rng, 0.2f), k_w = RandomTensor({E, 6}, rng, 0.4f);
  FloatTensor v_w = RandomTensor({E, 12}, rng, 0.3f), out_w = RandomTensor({E, E}, rng, 0.2f);
  ProjectionWeights packed, separate;
  packed.in_proj_weight = in_w.view();
  separate.q_proj_weight = q_w.view();
  separate.k_proj_weight = k_w.view();
  separate.v_proj_weight = v_w.view();
  for (ProjectionWeights* w : {&packed, &separate}) {
    w->in_proj_bias = in_b.view();
    w->out_proj_weight = out_w.view();
  }
  for (bool self : {true, false}) {
    for (WeightsMode weights : {WeightsMode::kNone, WeightsMode::kAveraged}) {
      SCOPED_TRACE(absl::StrCat("self=", self, " weights=", static_cast<int>(weights)));
      AttentionArgs a;
      a.self_attention = self;
      a.query = x.view();
      if (!self) {
        a.key = k.view();
        a.value = v.view();
      }
      a.num_heads = 2;
      a.projection = self ? &packed : &separate;
      a.weights = weights;
      absl::StatusOr<ReferenceResult> want = ReferenceAttention(a);
      ASSERT_TRUE(want.ok()) << want.status();
      ComputeOptions o;
      o.pack_min_keys = 1;
      o.max_threads = 2;
      PoisonedOutputs got;
      ASSERT_TRUE(ComputeAttention(a, o, &got).ok());
      EXPECT_LE(RelativeMaxError(got.output.data.data(), want->output), 2e-5);
      if (!want->weights.empty()) {
        EXPECT_LE(RelativeMaxError(got.weights.data.data(), want->weights), 2e-5);
      }
    }
  }
}

// Cross-attention of views of q, k and v (which must outlive the args).
AttentionArgs CrossAttention(const FloatTensor& q, const FloatTensor& k, const FloatTensor& v) {
  AttentionArgs a;
  a.self_attention = false;
  a.query = q.view();
  a.key = k.view();
  a.value = v.view();
  return a;
}

// Averaged weights of fewer row tiles than threads: each tile's heads are
// shared among the threads (3 heads two ways: 1 and 2), each share summing
// its own partial average.
TEST(AttentionVsReference, AveragedWeightsOfOneRowTileShareHeadsAmongThreads) {
  std::mt19937 rng(13);
  const int64_t L = 100, S = 300, E = 120;
  FloatTensor q = RandomTensor({1, L, E}, rng), k = RandomTensor({1, S, E}, rng);
  FloatTensor v = RandomTensor({1, S, E}, rng);
  std::vector<uint8_t> padding(S, 0);
  for (int64_t j = 250; j < S; ++j) padding[j] = 1;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(absl::StrCat("causal=", causal));
    AttentionArgs a = CrossAttention(q, k, v);
    a.num_heads = 3;
    a.causal = causal;
    a.key_padding_mask = TensorView{DType::kBool, {1, S}, padding.data(), padding.size()};
    a.weights = WeightsMode::kAveraged;
    absl::StatusOr<ReferenceResult> want = ReferenceAttention(a);
    ASSERT_TRUE(want.ok()) << want.status();
    ComputeOptions o;
    o.max_threads = 2;
    PoisonedOutputs got;
    ASSERT_TRUE(ComputeAttention(a, o, &got).ok());
    EXPECT_LE(RelativeMaxError(got.output.data.data(), want->output), 2e-5);
    EXPECT_LE(RelativeMaxError(got.weights.data.data(), want->weights), 2e-5);
  }
}

// A call whose intermediates (here K^T and V packed: 4 query heads read one
// key/value head of 2^20 keys) take more than the 64 MiB a thread keeps
// between calls: its workspace is allocated for the call alone.
TEST(AttentionVsReference, IntermediatesLargerThanTheKeptWorkspace) {
  std::mt19937 rng(17);
  const int64_t S = int64_t{1} << 20, D = 8;
  FloatTensor q = RandomTensor({1, 4, 1, D}, rng), k = RandomTensor({1, 1, S, D}, rng);
  FloatTensor v = RandomTensor({1, 1, S, D}, rng);
  AttentionArgs a = CrossAttention(q, k, v);
  a.num_kv_heads = 1;
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(a);
  ASSERT_TRUE(want.ok()) << want.status();
  for (int call = 0; call < 2; ++call) {  // the kept block is left as it was
    PoisonedOutputs got;
    ASSERT_TRUE(ComputeAttention(a, {}, &got).ok());
    EXPECT_LE(RelativeMaxError(got.output.data.data(), want->output), 2e-5);
  }
}

TEST(AttentionVsReference, FullyMaskedRowsAreZeroNotNaN) {
  std::mt19937 rng(7);
  FloatTensor q = RandomTensor({1, 4, 8}, rng);
  std::vector<uint8_t> mask = {1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0};  // [L=4, S=3]
  FloatTensor k = RandomTensor({1, 3, 8}, rng);
  AttentionArgs a = CrossAttention(q, k, k);
  a.num_heads = 2;
  a.attn_mask = TensorView{DType::kBool, {4, 3}, mask.data(), mask.size()};
  a.weights = WeightsMode::kPerHead;
  VectorOutputs out;
  ASSERT_TRUE(ComputeAttention(a, {}, &out).ok());
  for (int h = 0; h < 2; ++h) {
    for (int i : {0, 2}) {
      for (int j = 0; j < 3; ++j) EXPECT_EQ(out.weights.data[(h * 4 + i) * 3 + j], 0.0f);
    }
  }
  for (int i : {0, 2}) {
    for (int e = 0; e < 8; ++e) EXPECT_EQ(out.output.data[i * 8 + e], 0.0f);
  }
  for (float x : out.output.data) EXPECT_FALSE(std::isnan(x));
}

// A float mask row of NaN is not a masked row: the row's output is NaN, as
// PyTorch's softmax gives it (a single NaN already did); other rows are
// untouched. Both the whole-row and the tiled (online softmax) paths, and the
// reference.
TEST(AttentionVsReference, ARowOfNaNMaskValuesIsNaNAsInPyTorch) {
  std::mt19937 rng(8);
  FloatTensor q = RandomTensor({1, 3, 8}, rng);
  FloatTensor k = RandomTensor({1, 5, 8}, rng);
  std::vector<float> mask(3 * 5, 0.0f);
  for (int j = 0; j < 5; ++j) mask[1 * 5 + j] = std::nanf("");  // row 1 all NaN
  AttentionArgs a = CrossAttention(q, k, k);
  a.num_heads = 2;
  a.attn_mask = TensorView{DType::kFloat32, {3, 5}, mask.data(), mask.size() * 4};
  for (int64_t fused_min_keys : {int64_t{1} << 30, int64_t{1}}) {
    ComputeOptions o;
    o.fused_min_keys = fused_min_keys;
    VectorOutputs out;
    ASSERT_TRUE(ComputeAttention(a, o, &out).ok());
    for (int e = 0; e < 8; ++e) {
      EXPECT_TRUE(std::isnan(out.output.data[1 * 8 + e])) << fused_min_keys;
      EXPECT_FALSE(std::isnan(out.output.data[0 * 8 + e])) << fused_min_keys;
      EXPECT_FALSE(std::isnan(out.output.data[2 * 8 + e])) << fused_min_keys;
    }
  }
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(a);
  ASSERT_TRUE(want.ok());
  EXPECT_TRUE(std::isnan(want->output[1 * 8]));
  EXPECT_FALSE(std::isnan(want->output[0]));
}

// A valid base call, modified by each validation case.
struct Base {
  std::mt19937 rng{1};
  FloatTensor q = RandomTensor({2, 5, 8}, rng);
  FloatTensor k = RandomTensor({2, 7, 8}, rng);
  FloatTensor v = RandomTensor({2, 7, 8}, rng);
  AttentionArgs args;
  Base() {
    args.query = q.view();
    args.key = k.view();
    args.value = v.view();
    args.num_heads = 2;
  }
};

absl::Status RunCall(const AttentionArgs& a, int64_t max_memory = int64_t{1} << 30) {
  VectorOutputs out;
  ComputeOptions o;
  o.max_memory_bytes = max_memory;
  return ComputeAttention(a, o, &out);
}

TEST(AttentionValidation, NamesTheFieldAndTheProblem) {
  struct Case {
    const char* what;
    std::function<void(Base&)> edit;
    const char* message;
  };
  std::vector<uint8_t> bytes(1024);
  const Case cases[] = {
      {"key batch",
       [](Base& b) {
         b.k.shape = {3, 7, 8};
         b.k.data.resize(3 * 56);
         b.args.key = b.k.view();
       },
       "key: shape [3,7,8] does not match query batch 2"},
      {"value length",
       [](Base& b) {
         b.v.shape = {2, 6, 8};
         b.v.data.resize(96);
         b.args.value = b.v.view();
       },
       "value: length 6"},
      {"byte size", [](Base& b) { b.args.query.byte_size -= 4; }, "query: data has 316 bytes"},
      {"negative dim",
       [](Base& b) {
         b.args.query.shape = {2, -5, 8};
       },
       "query: dimension 1"},
      {"zero dim",
       [](Base& b) {
         b.args.key->shape = {2, 0, 8};
       },
       "key: dimension 1"},
      {"rank", [](Base& b) { b.args.query.shape = {80}; }, "query: shape [80] is not supported"},
      {"rank mismatch",
       [](Base& b) {
         b.args.key->shape = {14, 8};
       },
       "key: rank 2"},
      {"heads zero", [](Base& b) { b.args.num_heads = 0; }, "options.num_heads: must be positive"},
      {"heads divide", [](Base& b) { b.args.num_heads = 3; },
       "options.num_heads: 3 does not divide"},
      {"kv heads", [](Base& b) { b.args.num_kv_heads = 3; }, "options.num_kv_heads: 3 must divide"},
      {"key dim", [](Base& b) { b.args.num_kv_heads = 1; }, "key: last dim 8"},
      {"bool query", [](Base& b) { b.args.query.dtype = DType::kBool; }, "query: dtype BOOL"},
      {"missing key", [](Base& b) { b.args.key.reset(); }, "key: missing"},
      {"scale", [](Base& b) { b.args.scale = std::numeric_limits<float>::quiet_NaN(); },
       "options.scale"},
      {"mask shape",
       [&bytes](Base& b) {
         b.args.attn_mask = TensorView{DType::kBool, {5, 6}, bytes.data(), 30};
       },
       "options.attn_mask: shape [5,6] must be [L, S] = [5,7]"},
      {"mask bytes",
       [&bytes](Base& b) {
         b.args.attn_mask = TensorView{DType::kFloat32, {5, 7}, bytes.data(), 35};
       },
       "options.attn_mask: data has 35 bytes"},
      {"mask rank4",
       [&bytes](Base& b) {
         b.args.attn_mask = TensorView{DType::kBool, {2, 3, 5, 7}, bytes.data(), 210};
       },
       "broadcastable to [B, H, L, S] = [2,2,5,7]"},
      {"kpm shape",
       [&bytes](Base& b) {
         b.args.key_padding_mask = TensorView{DType::kBool, {2, 5}, bytes.data(), 10};
       },
       "options.key_padding_mask: shape [2,5] should be [B, S] = [2,7]"},
      {"overflow",
       [](Base& b) {
         b.args.query.shape = {int64_t{1} << 40, int64_t{1} << 30, 8};
       },
       "has more than 2^40 elements"},
      {"rank4 projection",
       [](Base& b) {
         static ProjectionWeights p;
         b.args.query.shape = {2, 1, 5, 8};
         b.args.key->shape = {2, 1, 7, 8};
         b.args.value->shape = {2, 1, 7, 8};
         b.args.projection = &p;
       },
       "options.projection: rank-4"},
      {"projection missing",
       [](Base& b) {
         static ProjectionWeights p;
         b.args.projection = &p;
       },
       "options.projection.out_proj_weight: missing"},
  };
  for (const Case& c : cases) {
    Base b;
    c.edit(b);
    absl::Status s = RunCall(b.args);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.what;
  }
}

TEST(AttentionValidation, ProjectionShapes) {
  std::mt19937 rng(3);
  FloatTensor x = RandomTensor({1, 4, 8}, rng);
  FloatTensor in_w = RandomTensor({24, 8}, rng), out_w = RandomTensor({8, 8}, rng);
  FloatTensor bad_bias = RandomTensor({23}, rng), wide = RandomTensor({8, 9}, rng);
  ProjectionWeights p;
  p.in_proj_weight = in_w.view();
  p.out_proj_weight = out_w.view();
  AttentionArgs a;
  a.self_attention = true;
  a.query = x.view();
  a.num_heads = 2;
  a.projection = &p;
  EXPECT_TRUE(RunCall(a).ok());
  p.in_proj_bias = bad_bias.view();
  EXPECT_THAT(std::string(RunCall(a).message()),
              HasSubstr("options.projection.in_proj_bias: shape [23] should be [24]"));
  p.in_proj_bias.reset();
  p.q_proj_weight = out_w.view();
  EXPECT_THAT(std::string(RunCall(a).message()), HasSubstr("not both"));
  p.in_proj_weight.reset();
  p.k_proj_weight = wide.view();
  p.v_proj_weight = out_w.view();
  EXPECT_THAT(std::string(RunCall(a).message()),
              HasSubstr("key: last dim 8 (shape [1,4,8]) does not match the projection's kdim 9"));
  a.num_kv_heads = 1;
  p.k_proj_weight = out_w.view();
  EXPECT_THAT(std::string(RunCall(a).message()), HasSubstr("options.num_kv_heads"));
}

TEST(AttentionLimits, HugeScoresAreRefusedBeforeAllocating) {
  // 256 KiB of inputs asking for 16 GiB of per-head weights.
  std::vector<uint8_t> small(4);
  AttentionArgs a;
  a.self_attention = true;
  a.query = TensorView{DType::kFloat32, {1, 65536, 1}, small.data(), 65536 * 4};
  a.num_heads = 1;
  a.weights = WeightsMode::kPerHead;
  absl::Status s = RunCall(a);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("over the per-request memory limit"));
}

// Self-attention [1, L, E] for planning only: the view claims data it does
// not have (PlanAttention reads shapes, never the elements).
AttentionArgs PlanOnlySelfAttention(int64_t L, int64_t E, int64_t heads) {
  static const uint8_t kNoData = 0;
  AttentionArgs a;
  a.self_attention = true;
  a.query = TensorView{DType::kFloat32, {1, L, E}, &kNoData, static_cast<size_t>(L * E * 4)};
  a.num_heads = heads;
  return a;
}

// Work grows as L x S even when the memory does not: 4.6 MiB of q = k = v
// [1, 100000, 4] is 1e10 scores. The work limit refuses it before anything is
// allocated, with a payload that tells it from a memory refusal; causal
// halves the scores counted.
TEST(AttentionLimits, WorkOverTheLimitIsRefusedBeforeComputing) {
  const AttentionArgs a = PlanOnlySelfAttention(100000, 4, 1);
  ComputeOptions o;
  absl::StatusOr<AttentionPlanInfo> info = PlanAttention(a, o);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_DOUBLE_EQ(info->work, info->flops + kWorkPerScore * 1e10);
  o.max_work = 1e12;
  const absl::Status s = PlanAttention(a, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("needs an estimated 1440 GFLOP of work (B=1, H=1, L=100000, S=100000), "
                        "over the per-request work limit of 1000 GFLOP"));
  EXPECT_TRUE(IsWorkLimitRefusal(s));
  AttentionArgs causal = a;
  causal.causal = true;
  absl::StatusOr<AttentionPlanInfo> half = PlanAttention(causal, {});
  EXPECT_DOUBLE_EQ(half->work, half->flops + kWorkPerScore * 5e9);
  EXPECT_FALSE(IsWorkLimitRefusal(PlanAttention(PlanOnlySelfAttention(1 << 20, 1 << 12, 1), {})
                                      .status()));  // over the memory limit: not work
}

TEST(AttentionLimits, LongSequenceWithoutWeightsFitsInLittleMemory) {
  const AttentionArgs a = PlanOnlySelfAttention(32768, 512, 8);
  absl::StatusOr<AttentionPlanInfo> info = PlanAttention(a, {});
  ASSERT_TRUE(info.ok()) << info.status();
  // output 64 MiB + packed K^T and V 128 MiB + key tiles (no O(L x S) scores)
  EXPECT_LT(info->memory_bytes, int64_t{256} << 20);
}

// Packing K^T and V is a speed-up: a request that fits the memory limit
// without it is computed without it, not refused.
TEST(AttentionLimits, PackingNeverPushesARequestOverTheLimit) {
  const AttentionArgs a = PlanOnlySelfAttention(4096, 512, 8);
  ComputeOptions unpacked;
  unpacked.pack_min_keys = int64_t{1} << 40;
  absl::StatusOr<AttentionPlanInfo> without = PlanAttention(a, unpacked);
  ASSERT_TRUE(without.ok()) << without.status();
  ComputeOptions o;
  absl::StatusOr<AttentionPlanInfo> with = PlanAttention(a, o);
  ASSERT_TRUE(with.ok()) << with.status();
  ASSERT_GT(with->memory_bytes, without->memory_bytes);  // packed when there is room
  o.max_memory_bytes = without->memory_bytes;
  absl::StatusOr<AttentionPlanInfo> tight = PlanAttention(a, o);
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_EQ(tight->memory_bytes, without->memory_bytes);
}

// Sharing a row tile's heads among idle threads (averaged weights) costs a
// partial average per extra share: fewer shares, never a refused request.
TEST(AttentionLimits, HeadSharesNeverPushARequestOverTheLimit) {
  AttentionArgs a = PlanOnlySelfAttention(128, 512, 8);  // one row tile
  a.weights = WeightsMode::kAveraged;
  ComputeOptions o;
  o.max_threads = 4;  // 4 shares of 2 heads
  absl::StatusOr<AttentionPlanInfo> shared = PlanAttention(a, o);
  ASSERT_TRUE(shared.ok()) << shared.status();
  o.max_memory_bytes = shared->memory_bytes - 1;
  absl::StatusOr<AttentionPlanInfo> tight = PlanAttention(a, o);
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_LE(tight->memory_bytes, o.max_memory_bytes);
  EXPECT_GE(tight->memory_bytes, shared->memory_bytes - 3 * 128 * 128 * 4);  // one share less
}

TEST(AttentionCheck, AbortsWithTheCallersStatus) {
  Base b;
  VectorOutputs out;
  ComputeOptions o;
  o.check = [] { return absl::DeadlineExceededError("deadline passed"); };
  EXPECT_EQ(ComputeAttention(b.args, o, &out).code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(AttentionPrimitives, CreatedOncePerShape) {
  RandomCase c;
  MakeRandomCase(11, c);
  VectorOutputs out;
  ASSERT_TRUE(ComputeAttention(c.args, {}, &out).ok());
  const int64_t after_first = internal::CachedPrimitiveCount();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ComputeAttention(c.args, {}, &out).ok());
  EXPECT_EQ(internal::CachedPrimitiveCount(), after_first);
}

TEST(AttentionThreads, ConcurrentCallsMatchSerialOnes) {
  constexpr int kCases = 24;
  std::vector<RandomCase> cases(kCases);
  std::vector<VectorOutputs> serial(kCases), parallel(kCases);
  ComputeOptions o;
  o.max_threads = 2;
  o.fused_min_keys = 100;
  o.pack_min_keys = 1;
  for (int i = 0; i < kCases; ++i) {
    MakeRandomCase(1000 + i, cases[i]);
    ASSERT_TRUE(ComputeAttention(cases[i].args, o, &serial[i]).ok());
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (int i = t; i < kCases; i += 4) {
          VectorOutputs out;
          if (!ComputeAttention(cases[i].args, o, &out).ok()) return;
          parallel[i] = std::move(out);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kCases; ++i) {
    SCOPED_TRACE(cases[i].description);
    EXPECT_EQ(parallel[i].output.data, serial[i].output.data);
    EXPECT_EQ(parallel[i].weights.data, serial[i].weights.data);
  }
}

}  // namespace
}  // namespace attention
