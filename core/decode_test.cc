// Incremental decoding (core/decode.h): a sequence decoded message by
// message, whatever the split, gives the rows of one causal forward over the
// whole sequence: against PyTorch's outputs (the committed fixtures), the
// double-precision reference, and the core's own one-shot forward.
#include "core/decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/model.h"
#include "core/reference.h"
#include "core/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

using testing::LoadFixture;
using testing::SourcePath;

constexpr double kTolerance = 1e-4;  // x max |expected|, the contract's bound

TensorView Rows(const std::vector<float>& data, int64_t width, int64_t first, int64_t count) {
  return TensorView{DType::kFloat32,
                    {count, width},
                    data.data() + first * width,
                    static_cast<size_t>(count * width * 4)};
}

// A sequence of `rows` tokens, decoded in messages of `split` rows (the last
// repeats), with a sequence cache of its own.
struct Decoded {
  std::vector<float> output;   // the messages' outputs, concatenated
  std::vector<float> weights;  // [rows, rows] averaged weights, zero-padded
};

// Decodes the tokens of one sequence: `args` gives the options and the
// model; `q`, `k`, `v` hold [rows, width] floats (k, v empty for
// self-attention: q is the input).
Decoded Decode(AttentionArgs args, const std::vector<float>& q, const std::vector<float>& k,
               const std::vector<float>& v, int64_t rows, const std::vector<int64_t>& split,
               int threads = 2) {
  const int64_t qw = static_cast<int64_t>(q.size()) / rows;
  Decoded d;
  std::unique_ptr<SequenceCache> cache;
  ComputeOptions options;
  options.max_threads = threads;
  int64_t done = 0;
  for (size_t m = 0; done < rows; ++m) {
    const int64_t n = std::min(split[std::min(m, split.size() - 1)], rows - done);
    args.query = Rows(q, qw, done, n);
    if (!args.self_attention) {
      args.key = Rows(k, static_cast<int64_t>(k.size()) / rows, done, n);
      args.value = Rows(v, static_cast<int64_t>(v.size()) / rows, done, n);
    }
    if (!cache) {
      absl::StatusOr<DecodePlan> plan = PlanDecode(args, nullptr, options);
      EXPECT_TRUE(plan.ok()) << plan.status();
      if (!plan.ok()) return d;
      cache = std::make_unique<SequenceCache>(plan->shape);
    }
    VectorOutputs out;
    const absl::Status s = DecodeStep(args, cache.get(), options, &out);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return d;
    EXPECT_EQ(cache->length(), done + n);
    d.output.insert(d.output.end(), out.output.data.begin(), out.output.data.end());
    if (args.weights == WeightsMode::kAveraged) {
      EXPECT_THAT(out.weights.shape, ::testing::ElementsAre(n, done + n));
      for (int64_t i = 0; i < n; ++i) {
        const float* row = out.weights.data.data() + i * (done + n);
        d.weights.insert(d.weights.end(), row, row + done + n);
        d.weights.insert(d.weights.end(), rows - done - n, 0.0f);
      }
    }
    done += n;
  }
  return d;
}

// Decodes, on one new sequence, `args` (queries with the memory as its keys
// and values), then each of `rest` (queries alone, the other options left
// unset: fixed by the first message); the outputs concatenated. `held`: the
// keys the sequence holds at the end.
std::vector<float> MemoryThenQueries(AttentionArgs args, const std::vector<TensorView>& rest,
                                     int64_t* held = nullptr) {
  absl::StatusOr<DecodePlan> plan = PlanDecode(args, nullptr, {});
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return {};
  SequenceCache cache(plan->shape);
  std::vector<float> got;
  VectorOutputs out;
  EXPECT_TRUE(DecodeStep(args, &cache, {}, &out).ok());
  got.insert(got.end(), out.output.data.begin(), out.output.data.end());
  args.key.reset();
  args.value.reset();
  args.num_heads = 0;
  args.num_kv_heads = 0;
  for (const TensorView& q : rest) {
    args.query = q;
    EXPECT_TRUE(DecodeStep(args, &cache, {}, &out).ok());
    got.insert(got.end(), out.output.data.begin(), out.output.data.end());
  }
  if (held != nullptr) *held = cache.length();
  return got;
}

const std::vector<std::vector<int64_t>> kSplits = {
    {1}, {1000}, {17, 1}, {64, 1}, {5, 1, 1, 3, 70, 2}, {100, 1}, {3, 16, 17}};

// Plain attention with grouped-query heads and a model, random inputs, every
// split against the double reference of the one causal forward.
struct Case {
  const char* name;
  int64_t rows, heads, kv_heads, head_dim, value_dim;
};

class DecodeRandomTest : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeRandomTest, EverySplitEqualsTheCausalForward) {
  const Case c = GetParam();
  std::mt19937 rng(7);
  const FloatTensor q = testing::RandomTensor({1, c.rows, c.heads * c.head_dim}, rng);
  const FloatTensor k = testing::RandomTensor({1, c.rows, c.kv_heads * c.head_dim}, rng);
  const FloatTensor v = testing::RandomTensor({1, c.rows, c.kv_heads * c.value_dim}, rng);
  AttentionArgs whole;
  whole.query = q.view();
  whole.key = k.view();
  whole.value = v.view();
  whole.num_heads = c.heads;
  whole.num_kv_heads = c.kv_heads;
  whole.causal = true;
  whole.weights = WeightsMode::kAveraged;
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(whole);
  ASSERT_TRUE(want.ok()) << want.status();
  for (const auto& split : kSplits) {
    SCOPED_TRACE(::testing::PrintToString(split));
    for (WeightsMode w : {WeightsMode::kNone, WeightsMode::kAveraged}) {
      AttentionArgs args = whole;
      args.weights = w;
      const Decoded d = Decode(args, q.data, k.data, v.data, c.rows, split);
      ASSERT_EQ(d.output.size(), want->output.size());
      EXPECT_LE(RelativeMaxError(d.output.data(), want->output), kTolerance);
      if (w == WeightsMode::kAveraged) {
        ASSERT_EQ(d.weights.size(), want->weights.size());
        EXPECT_LE(RelativeMaxError(d.weights.data(), want->weights), kTolerance);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeRandomTest,
                         ::testing::Values(Case{"mha", 150, 4, 4, 16, 16},
                                           Case{"gqa", 131, 8, 2, 8, 12},
                                           Case{"mqa_long", 300, 4, 1, 32, 32},
                                           Case{"one_head", 70, 1, 1, 64, 64}),
                         [](const auto& info) { return std::string(info.param.name); });

// The causal fixtures of PyTorch (nn.MultiheadAttention with a model and
// scaled_dot_product_attention): each batch entry decoded as a sequence.
class DecodeFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeFixtureTest, MatchesPyTorchsCausalForward) {
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f = LoadFixture(SourcePath(GetParam()));
  ASSERT_TRUE(f.ok()) << f.status();
  std::unique_ptr<const Model> model;
  AttentionArgs args = (*f)->args;
  if (!(*f)->model.empty()) {
    absl::StatusOr<std::unique_ptr<const Model>> m =
        LoadModel((*f)->model, SourcePath("tests/fixtures/models/" + (*f)->model + ".safetensors"));
    ASSERT_TRUE(m.ok()) << m.status();
    model = std::move(*m);
    args.projection = &model->weights();
  }
  ASSERT_TRUE(args.causal);
  const bool batched = args.query.shape.size() == 3;
  const int64_t B = batched ? args.query.shape[0] : 1;
  const int64_t L = args.query.shape[batched ? 1 : 0];
  const std::vector<float> q = testing::ToFloats(args.query);
  const std::vector<float> k =
      args.self_attention ? std::vector<float>{} : testing::ToFloats(*args.key);
  const std::vector<float> v =
      args.self_attention ? std::vector<float>{} : testing::ToFloats(*args.value);
  const std::vector<float> want = testing::ToFloats(*(*f)->expected_output);
  const int64_t out_width = (*f)->expected_output->shape.back();
  args.weights = WeightsMode::kNone;
  for (const auto& split : kSplits) {
    SCOPED_TRACE(::testing::PrintToString(split));
    for (int64_t b = 0; b < B; ++b) {
      auto part = [&](const std::vector<float>& x) {
        const size_t n = x.size() / B;
        return x.empty() ? x : std::vector<float>(x.begin() + b * n, x.begin() + (b + 1) * n);
      };
      const Decoded d = Decode(args, part(q), part(k), part(v), L, split);
      const std::vector<float> rows(want.begin() + b * L * out_width,
                                    want.begin() + (b + 1) * L * out_width);
      ASSERT_EQ(d.output.size(), rows.size());
      EXPECT_LE(RelativeMaxError(d.output.data(), {rows.begin(), rows.end()}), kTolerance);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, DecodeFixtureTest,
    ::testing::Values("tests/fixtures/mha_self_causal_avg.safetensors",
                      "tests/fixtures/sdpa_self_causal_avg.safetensors",
                      "tests/fixtures/sdpa_unbatched_self_causal_perhead.safetensors"),
    [](const auto& info) {
      std::string name = info.param.substr(info.param.rfind('/') + 1);
      return name.substr(0, name.find('.'));
    });

// Keys and values held in bfloat16: within PyTorch's own bfloat16 error on
// the same inputs (the bfloat16 fixture's metadata), and not float32.
TEST(Decode, Bfloat16StorageErrsNoMoreThanPyTorchBfloat16) {
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/bf16/bf16_mha_self_e128_h8_causal.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  double torch_error = 0;
  ASSERT_TRUE(absl::SimpleAtod((*f)->file.metadata.at("torch_bf16_error"), &torch_error));
  AttentionArgs args = (*f)->args;
  args.precision = Precision::kBFloat16;
  args.weights = WeightsMode::kNone;
  ASSERT_TRUE(args.self_attention && args.causal);
  const int64_t B = args.query.shape[0], L = args.query.shape[1];
  const std::vector<float> q = testing::ToFloats(args.query);
  const std::vector<float> want = testing::ToFloats(*(*f)->expected_output);
  const size_t n = want.size() / B;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<float> input(q.begin() + b * (q.size() / B),
                                   q.begin() + (b + 1) * (q.size() / B));
    const Decoded d = Decode(args, input, {}, {}, L, {9, 1});
    const std::vector<double> rows(want.begin() + b * n, want.begin() + (b + 1) * n);
    const double error = RelativeMaxError(d.output.data(), rows);
    EXPECT_LE(error, 1.5 * torch_error + 1e-4) << "PyTorch bfloat16: " << torch_error;
    EXPECT_GT(error, 1e-6);  // the keys really were rounded
  }
}

// Steps of many sequences computed as one batch (DecodeSteps) give each
// sequence exactly what its steps alone give: sequences of one model with
// different splits, one keeping bfloat16 keys, one asking for weights, a
// plain sequence and a refused message in the same batches.
TEST(Decode, BatchedStepsEqualEachSequenceAlone) {
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/bf16/bf16_mha_self_e128_h8_causal.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  const AttentionArgs model = (*f)->args;
  ASSERT_NE(model.projection, nullptr);
  const int64_t B = model.query.shape[0], L = model.query.shape[1], E = model.query.shape[2];
  const std::vector<float> q = testing::ToFloats(model.query);
  struct Sequence {
    AttentionArgs args;
    std::vector<float> input;
    std::vector<int64_t> split;
    Decoded alone, batched;
    std::unique_ptr<SequenceCache> cache;
    int64_t done = 0;
  };
  std::vector<Sequence> seqs(B + 2);  // B of the model, one more in bfloat16, one plain
  for (int64_t b = 0; b < B + 2; ++b) {
    Sequence& s = seqs[b];
    s.args = model;
    s.args.weights = b == 1 ? WeightsMode::kAveraged : WeightsMode::kNone;
    s.args.precision = b == B ? Precision::kBFloat16 : Precision::kFloat32;
    s.split = {3 + 2 * b, 1};
    const int64_t from = b < B ? b : 0;
    s.input.assign(q.begin() + from * L * E, q.begin() + (from + 1) * L * E);
    if (b == B + 1) {  // plain attention over the same tokens
      s.args.projection = nullptr;
      s.args.num_heads = 4;
    }
    s.alone = Decode(s.args, s.input, {}, {}, L, s.split);
  }
  const std::vector<float> wrong(3 * (E + 1), 0.5f);
  for (bool more = true; more;) {
    more = false;
    std::vector<AttentionArgs> args;
    std::vector<Sequence*> who;
    args.reserve(seqs.size() + 1);
    for (Sequence& s : seqs) {
      if (s.done == L) continue;
      const size_t m = s.batched.output.size() == 0 ? 0 : 1;
      const int64_t n = std::min(s.split[m], L - s.done);
      args.push_back(s.args);
      args.back().query = Rows(s.input, E, s.done, n);
      if (!s.cache) {
        absl::StatusOr<DecodePlan> plan = PlanDecode(args.back(), nullptr, {});
        ASSERT_TRUE(plan.ok()) << plan.status();
        s.cache = std::make_unique<SequenceCache>(plan->shape);
      }
      who.push_back(&s);
    }
    if (who.empty()) break;
    more = true;
    std::vector<VectorOutputs> outs(who.size() + 1);
    std::vector<DecodeMember> members;
    for (size_t i = 0; i < who.size(); ++i) {
      members.push_back({&args[i], who[i]->cache.get(), &outs[i]});
    }
    // A message for the first sequence's model that is one wider: refused
    // alone (its own sequence untouched), the others computed.
    AttentionArgs bad = seqs[0].args;
    bad.query = Rows(wrong, E + 1, 0, 3);
    SequenceCache bad_cache(who[0]->cache->shape());
    members.push_back({&bad, &bad_cache, &outs.back()});
    ComputeOptions options;
    options.max_threads = 2;
    const std::vector<absl::Status> status = DecodeSteps(members, options);
    ASSERT_EQ(status.size(), members.size());
    EXPECT_EQ(status.back().code(), absl::StatusCode::kInvalidArgument) << status.back();
    EXPECT_EQ(bad_cache.length(), 0);
    for (size_t i = 0; i < who.size(); ++i) {
      ASSERT_TRUE(status[i].ok()) << status[i];
      Sequence& s = *who[i];
      const int64_t n = args[i].query.shape[0];
      s.batched.output.insert(s.batched.output.end(), outs[i].output.data.begin(),
                              outs[i].output.data.end());
      if (s.args.weights != WeightsMode::kNone) {
        for (int64_t r = 0; r < n; ++r) {
          const float* row = outs[i].weights.data.data() + r * (s.done + n);
          s.batched.weights.insert(s.batched.weights.end(), row, row + s.done + n);
          s.batched.weights.insert(s.batched.weights.end(), L - s.done - n, 0.0f);
        }
      }
      s.done += n;
      EXPECT_EQ(s.cache->length(), s.done);
    }
  }
  // Equal to float32 rounding: the products' kernels may round a row of a
  // larger product differently (bit for bit on AVX-512; a few ulps on AVX2,
  // ONEDNN_MAX_CPU_ISA=AVX2 shows it).
  auto same = [](const std::vector<float>& got, const std::vector<float>& want) {
    if (got.size() != want.size()) return false;
    float top = 0, diff = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      top = std::max(top, std::abs(want[i]));
      diff = std::max(diff, std::abs(got[i] - want[i]));
    }
    return diff <= 1e-5f * std::max(top, 1e-30f);
  };
  for (size_t b = 0; b < seqs.size(); ++b) {
    SCOPED_TRACE(b);
    ASSERT_EQ(seqs[b].batched.output.size(), static_cast<size_t>(L * E));
    EXPECT_TRUE(same(seqs[b].batched.output, seqs[b].alone.output));
    EXPECT_TRUE(same(seqs[b].batched.weights, seqs[b].alone.weights));
  }
  EXPECT_NE(seqs[0].alone.output, seqs[B].alone.output);      // float32 vs bfloat16 keys
  EXPECT_NE(seqs[0].alone.output, seqs[B + 1].alone.output);  // the model vs plain
}

// Cross-attention over a memory sent once: the first message carries the
// memory (and queries), later ones queries alone.
TEST(Decode, QueriesOverAMemorySentOnce) {
  std::mt19937 rng(3);
  const int64_t S = 90, H = 4, D = 8;
  const FloatTensor memory_k = testing::RandomTensor({1, S, H * D}, rng);
  const FloatTensor memory_v = testing::RandomTensor({1, S, H * D}, rng);
  const FloatTensor queries = testing::RandomTensor({1, 5, H * D}, rng);
  AttentionArgs whole;
  whole.query = queries.view();
  whole.key = memory_k.view();
  whole.value = memory_v.view();
  whole.num_heads = H;
  absl::StatusOr<ReferenceResult> want = ReferenceAttention(whole);
  ASSERT_TRUE(want.ok());

  AttentionArgs args;
  args.num_heads = H;
  args.query = Rows(queries.data, H * D, 0, 2);
  args.key = Rows(memory_k.data, H * D, 0, S);
  args.value = Rows(memory_v.data, H * D, 0, S);
  int64_t held = 0;
  const std::vector<float> got =
      MemoryThenQueries(args,
                        {Rows(queries.data, H * D, 2, 1), Rows(queries.data, H * D, 3, 1),
                         Rows(queries.data, H * D, 4, 1)},
                        &held);
  EXPECT_EQ(held, S);
  ASSERT_EQ(got.size(), want->output.size());
  EXPECT_LE(RelativeMaxError(got.data(), want->output), kTolerance);
}

// PyTorch's grouped-query cross-attention (scaled_dot_product_attention with
// enable_gqa semantics, 4 query heads over 2 key/value heads): the memory sent
// with the first queries, the other queries alone, per batch entry.
TEST(Decode, GroupedQueryCrossAttentionOverAMemoryMatchesPyTorch) {
  absl::StatusOr<std::unique_ptr<testing::Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/sdpa_gqa_avg.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  const AttentionArgs& whole = (*f)->args;
  ASSERT_FALSE(whole.causal);
  ASSERT_EQ(whole.num_kv_heads * 2, whole.num_heads);
  const int64_t B = whole.query.shape[0], L = whole.query.shape[1], S = whole.key->shape[1];
  const int64_t qw = whole.query.shape[2], kw = whole.key->shape[2], vw = whole.value->shape[2];
  const std::vector<float> q = testing::ToFloats(whole.query), k = testing::ToFloats(*whole.key),
                           v = testing::ToFloats(*whole.value),
                           want = testing::ToFloats(*(*f)->expected_output);
  const int64_t ow = (*f)->expected_output->shape[2];
  for (int64_t b = 0; b < B; ++b) {
    AttentionArgs args;
    args.num_heads = whole.num_heads;
    args.num_kv_heads = whole.num_kv_heads;
    args.query = Rows(q, qw, b * L, 2);
    args.key = Rows(k, kw, b * S, S);
    args.value = Rows(v, vw, b * S, S);
    const std::vector<float> got = MemoryThenQueries(args, {Rows(q, qw, b * L + 2, L - 2)});
    const std::vector<double> rows(want.begin() + b * L * ow, want.begin() + (b + 1) * L * ow);
    ASSERT_EQ(got.size(), rows.size());
    EXPECT_LE(RelativeMaxError(got.data(), rows), kTolerance);
  }
}

// Refusals change nothing; a failed step is undone.
TEST(Decode, RefusedOrFailedMessagesLeaveTheSequenceAsItWas) {
  std::mt19937 rng(5);
  const FloatTensor x = testing::RandomTensor({1, 10, 16}, rng);
  AttentionArgs args;
  args.self_attention = true;
  args.num_heads = 2;
  args.causal = true;
  args.query = Rows(x.data, 16, 0, 3);
  absl::StatusOr<DecodePlan> plan = PlanDecode(args, nullptr, {});
  ASSERT_TRUE(plan.ok());
  SequenceCache cache(plan->shape);
  VectorOutputs out;
  ASSERT_TRUE(DecodeStep(args, &cache, {}, &out).ok());
  ASSERT_EQ(cache.length(), 3);

  AttentionArgs changed = args;
  changed.query = Rows(x.data, 16, 3, 1);
  changed.num_heads = 4;
  absl::Status s = DecodeStep(changed, &cache, {}, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              ::testing::HasSubstr("options.num_heads: 4 differs from the sequence's 2"));
  changed = args;
  changed.scale = 0.5f;
  EXPECT_THAT(DecodeStep(changed, &cache, {}, &out).message(),
              ::testing::HasSubstr("options.scale"));
  changed = args;
  changed.scale = std::numeric_limits<float>::infinity();
  EXPECT_THAT(DecodeStep(changed, &cache, {}, &out).message(),
              ::testing::HasSubstr("options.scale: inf is not a finite number"));
  changed = args;
  changed.precision = Precision::kBFloat16;
  EXPECT_THAT(DecodeStep(changed, &cache, {}, &out).message(),
              ::testing::HasSubstr("options.precision: PRECISION_BFLOAT16 differs"));
  changed = args;
  const FloatTensor mask = testing::RandomTensor({1, 4}, rng);
  changed.attn_mask = mask.view();
  EXPECT_THAT(DecodeStep(changed, &cache, {}, &out).message(),
              ::testing::HasSubstr("options.attn_mask: not taken"));
  changed = args;
  changed.query = TensorView{DType::kFloat32, {2, 1, 16}, x.data.data(), 2 * 16 * 4};
  EXPECT_THAT(DecodeStep(changed, &cache, {}, &out).message(),
              ::testing::HasSubstr("one sequence a message"));
  EXPECT_EQ(cache.length(), 3);

  ComputeOptions cancelled;
  cancelled.check = [] { return absl::CancelledError("gone"); };
  args.query = Rows(x.data, 16, 3, 1);
  EXPECT_EQ(DecodeStep(args, &cache, cancelled, &out).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(cache.length(), 3);
  ASSERT_TRUE(DecodeStep(args, &cache, {}, &out).ok());
  EXPECT_EQ(cache.length(), 4);
}

// The stateless core's few-queries path (ComputeAttention with L <= 16 over
// at least 1024 keys, no weights or masks, runs the decode kernel on the
// tensors' rows): ranks 3 and 4, grouped-query heads, causal, batches.
TEST(Decode, FewQueriesOverManyKeysMatchTheReference) {
  std::mt19937 rng(13);
  struct Shape {
    int64_t B, L, S, H, Hkv, D, Dv;
    bool rank4, causal;
  };
  for (const Shape& c :
       {Shape{1, 1, 1024, 4, 4, 16, 16, false, false}, Shape{2, 3, 1500, 8, 2, 8, 12, false, true},
        Shape{2, 16, 1100, 4, 1, 32, 20, true, false},
        Shape{1, 5, 2048, 2, 2, 64, 64, true, true}}) {
    SCOPED_TRACE(::testing::Message() << "B " << c.B << " L " << c.L << " S " << c.S);
    const FloatTensor q = c.rank4 ? testing::RandomTensor({c.B, c.H, c.L, c.D}, rng)
                                  : testing::RandomTensor({c.B, c.L, c.H * c.D}, rng);
    const FloatTensor k = c.rank4 ? testing::RandomTensor({c.B, c.Hkv, c.S, c.D}, rng)
                                  : testing::RandomTensor({c.B, c.S, c.Hkv * c.D}, rng);
    const FloatTensor v = c.rank4 ? testing::RandomTensor({c.B, c.Hkv, c.S, c.Dv}, rng)
                                  : testing::RandomTensor({c.B, c.S, c.Hkv * c.Dv}, rng);
    AttentionArgs args;
    args.query = q.view();
    args.key = k.view();
    args.value = v.view();
    args.num_heads = c.rank4 ? 0 : c.H;
    args.num_kv_heads = c.rank4 ? 0 : c.Hkv;
    args.causal = c.causal;
    absl::StatusOr<ReferenceResult> want = ReferenceAttention(args);
    ASSERT_TRUE(want.ok()) << want.status();
    for (int threads : {1, 2}) {
      ComputeOptions options;
      options.max_threads = threads;
      VectorOutputs out;
      ASSERT_TRUE(ComputeAttention(args, options, &out).ok());
      ASSERT_EQ(out.output.shape, want->output_shape);
      EXPECT_LE(RelativeMaxError(out.output.data.data(), want->output), kTolerance);
    }
  }
}

// Queries over a sequence that holds no keys yet attend nothing: zeros (and
// empty weights), on either path.
TEST(Decode, QueriesWithNothingToAttendGiveZeros) {
  std::mt19937 rng(21);
  const FloatTensor q = testing::RandomTensor({1, 20, 16}, rng);
  for (const WeightsMode w : {WeightsMode::kNone, WeightsMode::kAveraged}) {
    for (const int64_t rows : {int64_t{1}, int64_t{20}}) {  // the kernel and the gathered path
      AttentionArgs args;
      args.num_heads = 2;
      args.weights = w;
      args.query = Rows(q.data, 16, 0, rows);
      absl::StatusOr<DecodePlan> plan = PlanDecode(args, nullptr, {});
      ASSERT_TRUE(plan.ok()) << plan.status();
      SequenceCache cache(plan->shape);
      VectorOutputs out;
      ASSERT_TRUE(DecodeStep(args, &cache, {}, &out).ok());
      EXPECT_THAT(out.output.data, ::testing::Each(0.0f));
      EXPECT_EQ(out.output.data.size(), static_cast<size_t>(rows * 16));
      if (w == WeightsMode::kAveraged) {
        EXPECT_THAT(out.weights.shape, ::testing::ElementsAre(rows, 0));
      }
    }
  }
}

// Blocks: an append takes whole blocks only when it crosses into new ones.
TEST(Decode, HeldBytesAreTheTokensPlusAtMostOneBlock) {
  SequenceShape shape;
  shape.num_heads = 8;
  shape.num_kv_heads = 2;
  shape.head_dim = shape.value_dim = 32;
  shape.scale = 1;
  EXPECT_EQ(shape.TokenBytes(), 2 * 2 * 32 * 4);
  shape.bfloat16 = true;
  EXPECT_EQ(shape.TokenBytes(), 2 * 2 * 32 * 2);
  SequenceCache cache(shape);
  const int64_t block = cache.BlockBytes();
  EXPECT_EQ(block, SequenceCache::kBlockTokens * shape.TokenBytes());
  EXPECT_EQ(cache.AppendBytes(1), block);
  EXPECT_EQ(cache.AppendBytes(65), 2 * block);
  std::vector<float> rows(70 * 64, 1.0f);
  cache.Append(70, rows.data(), 64, rows.data(), 64);
  EXPECT_EQ(cache.bytes(), 2 * block);
  EXPECT_EQ(cache.AppendBytes(58), 0);
  EXPECT_EQ(cache.AppendBytes(59), block);
  EXPECT_LE(cache.bytes(), cache.length() * shape.TokenBytes() + block);
  cache.Truncate(64);
  EXPECT_EQ(cache.bytes(), block);
}

}  // namespace
}  // namespace attention
