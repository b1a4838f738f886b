// decode-bench: the figures of incremental decoding (StreamDecode), each a
// ratio of two things timed in the same run:
//   - the machine's read bandwidth (a sum over 1 GiB on every thread),
//   - in process: one decode step (one query over S held keys) of float32
//     and of bfloat16 storage, as bytes of keys and values read per second,
//     and the stateless core on the same shape (ComputeAttention with the
//     whole key/value),
//   - with --target: a StreamDecode step through the server against the
//     stateless Attention call carrying the whole key/value, and the bytes
//     each sends,
//   - with --model-file and --sequences K: in process, one step of each of K
//     sequences of that model computed as one batch (DecodeSteps: the
//     projections as one product) against the K steps one by one.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/timing.h"
#include "client/args.h"
#include "client/client.h"
#include "core/attention.h"
#include "core/decode.h"
#include "core/model.h"

namespace attention {
namespace {

using bench::InTurns;
using bench::TimeIt;

constexpr char kUsage[] =
    R"(decode-bench: decode steps in process and through a server, against baselines.

usage: decode-bench --context S[,S...] --embed E --heads H [--kv-heads G]
                    [--threads N] [--min-time SECONDS] [--target HOST:PORT]
       decode-bench --context S[,S...] --model-file M.safetensors --sequences K

  --context      keys held when the step runs (comma-separated: one row each)
  --embed        H x head dim of queries (plain attention: no projection)
  --kv-heads     key/value heads (default H)
  --threads N    OpenMP threads (default: every core)
  --min-time X   seconds of timing per figure (default 1)
  --target       also through this server: a StreamDecode step against the stateless
                 Attention call with the whole key/value (plain attention)
  --model-file   a model (nn.MultiheadAttention weights): K sequences of it, a step of
  --sequences K  each batched (projections as one product) against the K steps one by one
)";

std::vector<float> Random(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// GB/s of a sum over `bytes` on every thread (the best of a few passes).
double ReadBandwidth(int threads, size_t bytes) {
  std::vector<float> a(bytes / sizeof(float), 1.0f);
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const double start = omp_get_wtime();
    float sum = 0;
#pragma omp parallel for simd num_threads(threads) reduction(+ : sum) schedule(static)
    for (size_t i = 0; i < a.size(); ++i) sum += a[i];
    const double seconds = omp_get_wtime() - start;
    if (sum < 0) std::printf("?");  // keeps the sum
    best = std::max(best, static_cast<double>(bytes) / seconds / 1e9);
  }
  return best;
}

struct Shape {
  int64_t context, embed, heads, kv_heads;
  int64_t head_dim() const { return embed / heads; }
  int64_t kv_width() const { return kv_heads * head_dim(); }
};

// A sequence of `s.context` random keys and values, and a step's args.
struct Step {
  std::unique_ptr<SequenceCache> cache;
  std::vector<float> query, key, value;
  AttentionArgs args;

  Step(const Shape& s, bool bf16, std::mt19937& rng) {
    query = Random(s.embed, rng);
    key = Random(s.kv_width(), rng);
    value = Random(s.kv_width(), rng);
    args.query = {DType::kFloat32, {1, s.embed}, query.data(), query.size() * 4};
    args.key = TensorView{DType::kFloat32, {1, s.kv_width()}, key.data(), key.size() * 4};
    args.value = TensorView{DType::kFloat32, {1, s.kv_width()}, value.data(), value.size() * 4};
    args.num_heads = s.heads;
    args.num_kv_heads = s.kv_heads;
    args.causal = true;
    args.precision = bf16 ? Precision::kBFloat16 : Precision::kFloat32;
    SequenceShape shape = PlanDecode(args, nullptr, {})->shape;
    cache = std::make_unique<SequenceCache>(shape);
    const std::vector<float> held = Random(s.context * s.kv_width(), rng);
    cache->Append(s.context - 1, held.data(), s.kv_width(), held.data(), s.kv_width());
  }
  // One step (appends the token, then drops it: the context stays S).
  bool Run(const ComputeOptions& options) {
    VectorOutputs out;
    const int64_t held = cache->length();
    const bool ok = DecodeStep(args, cache.get(), options, &out).ok();
    cache->Truncate(held);
    return ok;
  }
};

void InProcess(const Shape& s, int threads, double min_time, double bandwidth) {
  std::mt19937 rng(1);
  ComputeOptions options;
  options.max_threads = threads;
  Step f32(s, false, rng), bf16(s, true, rng);
  const bench::Timing t32 = TimeIt([&] { return f32.Run(options); }, min_time);
  const bench::Timing t16 = TimeIt([&] { return bf16.Run(options); }, min_time);
  const double bytes32 = static_cast<double>(s.context) * 2 * s.kv_width() * 4;
  const double gbs32 = bytes32 / (t32.median_ms / 1e3) / 1e9;
  const double gbs16 = bytes32 / 2 / (t16.median_ms / 1e3) / 1e9;
  // The stateless core on the same shape: the whole key/value in the call.
  const std::vector<float> k = Random(s.context * s.kv_width(), rng);
  AttentionArgs whole;
  whole.query = {DType::kFloat32, {1, 1, s.embed}, f32.query.data(), f32.query.size() * 4};
  whole.key = TensorView{DType::kFloat32, {1, s.context, s.kv_width()}, k.data(), k.size() * 4};
  whole.value = whole.key;
  whole.num_heads = s.heads;
  whole.num_kv_heads = s.kv_heads;
  const bench::Turns vs = InTurns(
      [&] {
        VectorOutputs out;
        return ComputeAttention(whole, options, &out).ok();
      },
      [&] { return f32.Run(options); }, min_time);
  std::printf(
      "context %6lld  E %lld H %lld Hkv %lld | step f32 %.3f ms (%.1f GB/s, %.0f%% of read "
      "bandwidth) | bf16 %.3f ms (%.1f GB/s, %.2fx f32's rate) | stateless core: step / it "
      "%.3f (%.3f-%.3f)\n",
      static_cast<long long>(s.context), static_cast<long long>(s.embed),
      static_cast<long long>(s.heads), static_cast<long long>(s.kv_heads), t32.median_ms, gbs32,
      100 * gbs32 / bandwidth, t16.median_ms, gbs16, t32.median_ms / t16.median_ms, vs.median,
      vs.low, vs.high);
}

// Through a server: a decode step on a stream prefilled to the context,
// against the stateless call that sends the whole key/value.
int ThroughServer(const Shape& s, const std::string& target, double min_time) {
  client::AttentionClient c(client::AttentionClient::Connect(target));
  std::mt19937 rng(2);
  const std::vector<float> q = Random(s.embed, rng);
  const std::vector<float> kv = Random(s.context * s.kv_width(), rng);
  client::DecodeStream stream(&c);
  v1::DecodeRequest prefill;
  prefill.set_sequence("bench");
  *prefill.mutable_query() = client::MakeTensor({1, s.embed}, q.data(), DType::kFloat32);
  *prefill.mutable_key() =
      client::MakeTensor({s.context - 1, s.kv_width()}, kv.data(), DType::kFloat32);
  *prefill.mutable_value() = *prefill.mutable_key();
  prefill.mutable_options()->set_num_heads(static_cast<int32_t>(s.heads));
  prefill.mutable_options()->set_num_kv_heads(static_cast<int32_t>(s.kv_heads));
  prefill.mutable_options()->set_causal(true);
  if (absl::StatusOr<v1::AttentionResponse> r = stream.Append(prefill); !r.ok()) {
    std::fprintf(stderr, "decode-bench: prefill: %s\n", r.status().ToString().c_str());
    return 1;
  }
  v1::DecodeRequest step = prefill;
  step.clear_options();
  step.mutable_options()->set_causal(true);
  *step.mutable_key() = client::MakeTensor({1, s.kv_width()}, kv.data(), DType::kFloat32);
  *step.mutable_value() = *step.mutable_key();
  // Each step appends a token; ending and refilling would cost more than the
  // growth (a step adds 1 to thousands of keys).
  int64_t step_bytes = 0;
  auto decode = [&] {
    absl::StatusOr<v1::AttentionResponse> r = stream.Append(step);
    step_bytes = stream.last_request_bytes();
    return r.ok();
  };
  v1::AttentionRequest stateless;
  *stateless.mutable_query() = client::MakeTensor({1, 1, s.embed}, q.data(), DType::kFloat32);
  *stateless.mutable_key() =
      client::MakeTensor({1, s.context, s.kv_width()}, kv.data(), DType::kFloat32);
  *stateless.mutable_value() = *stateless.mutable_key();
  stateless.mutable_options()->set_num_heads(static_cast<int32_t>(s.heads));
  stateless.mutable_options()->set_num_kv_heads(static_cast<int32_t>(s.kv_heads));
  auto call = [&] { return c.Attention(stateless).ok(); };
  const bench::Turns vs = InTurns(call, decode, min_time);
  if (vs.turns == 0) {
    std::fprintf(stderr, "decode-bench: a call through %s failed\n", target.c_str());
    return 1;
  }
  const bench::Timing step_alone = TimeIt(decode, min_time);
  std::printf(
      "context %6lld  through the server: StreamDecode step %.3f ms (%lld bytes sent) vs "
      "Attention with the whole key/value (%lld bytes): %.1fx faster (%.1f-%.1f); the stream "
      "held %lld keys at the end (each step appends its token)\n",
      static_cast<long long>(s.context), step_alone.median_ms, static_cast<long long>(step_bytes),
      static_cast<long long>(stateless.ByteSizeLong()), 1 / vs.median, 1 / vs.high, 1 / vs.low,
      static_cast<long long>(stream.length("bench")));
  return stream.Close().ok() ? 0 : 1;
}

// K sequences of `model` holding `context` keys each: a step of each as one
// batch (DecodeSteps) against the K steps one by one (DecodeStep).
int Batched(const Model& model, int64_t context, int k, int threads, double min_time) {
  const int64_t E = model.info().embed_dim;
  std::mt19937 rng(3);
  const std::vector<float> tokens = Random((context + 1) * E, rng);
  ComputeOptions options;
  options.max_threads = threads;
  std::vector<AttentionArgs> steps(k);
  std::vector<std::unique_ptr<SequenceCache>> caches;
  for (int i = 0; i < k; ++i) {
    AttentionArgs prefill;
    prefill.self_attention = true;
    prefill.causal = true;
    prefill.num_heads = model.info().num_heads;
    prefill.projection = &model.weights();
    prefill.query = {
        DType::kFloat32, {context, E}, tokens.data(), static_cast<size_t>(context * E) * 4};
    caches.push_back(std::make_unique<SequenceCache>(PlanDecode(prefill, nullptr, {})->shape));
    VectorOutputs out;
    if (!DecodeStep(prefill, caches.back().get(), options, &out).ok()) return 1;
    steps[i] = prefill;
    steps[i].query = {
        DType::kFloat32, {1, E}, tokens.data() + context * E, static_cast<size_t>(E) * 4};
  }
  // Each round appends a token to every sequence, then drops it.
  std::vector<VectorOutputs> outs(k);
  auto undo = [&] {
    for (auto& c : caches) c->Truncate(context);
  };
  auto one_by_one = [&] {
    bool ok = true;
    for (int i = 0; i < k; ++i) ok &= DecodeStep(steps[i], caches[i].get(), options, &outs[i]).ok();
    undo();
    return ok;
  };
  auto batched = [&] {
    std::vector<DecodeMember> members;
    for (int i = 0; i < k; ++i) members.push_back({&steps[i], caches[i].get(), &outs[i]});
    bool ok = true;
    for (const absl::Status& s : DecodeSteps(members, options)) ok &= s.ok();
    undo();
    return ok;
  };
  const bench::Turns vs = InTurns(one_by_one, batched, min_time);
  if (vs.turns == 0) return 1;
  const bench::Timing alone = TimeIt(one_by_one, min_time / 2);
  std::printf(
      "context %6lld  model E %lld H %lld, %d sequences: a step of each one by one %.3f ms, "
      "batched %.3f ms: %.2fx the steps per second (%.2f-%.2f)\n",
      static_cast<long long>(context), static_cast<long long>(E),
      static_cast<long long>(model.info().num_heads), k, alone.median_ms,
      alone.median_ms * vs.median, 1 / vs.median, 1 / vs.high, 1 / vs.low);
  return 0;
}

int Main(int argc, char** argv) {
  absl::StatusOr<client::CliArgs> parsed = client::ParseArgs(argc, argv, {"help"});
  if (!parsed.ok() || parsed->switches.count("help") || !parsed->Has("context")) {
    std::fputs(kUsage, parsed.ok() && parsed->switches.count("help") ? stdout : stderr);
    return parsed.ok() && parsed->switches.count("help") ? 0 : 2;
  }
  const client::CliArgs& a = *parsed;
  Shape base{0, *a.GetInt("embed", 1024), *a.GetInt("heads", 16), *a.GetInt("kv-heads", 0)};
  if (base.kv_heads == 0) base.kv_heads = base.heads;
  const int threads = static_cast<int>(*a.GetInt("threads", omp_get_max_threads()));
  const double min_time = *a.GetDouble("min-time", 1);
  const double bandwidth = ReadBandwidth(threads, size_t{1} << 30);
  std::printf("read bandwidth: %.1f GB/s (%d threads, a sum over 1 GiB)\n", bandwidth, threads);
  std::unique_ptr<const Model> model;
  if (a.Has("model-file")) {
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel("bench", a.Get("model-file"));
    if (!m.ok()) {
      std::fprintf(stderr, "decode-bench: %s\n", m.status().ToString().c_str());
      return 1;
    }
    model = *std::move(m);
  }
  for (absl::string_view c : absl::StrSplit(a.Get("context"), ',')) {
    if (model) {
      int64_t context = 0;
      if (!absl::SimpleAtoi(c, &context) || context < 1) return 2;
      const int k = static_cast<int>(*a.GetInt("sequences", 32));
      if (int rc = Batched(*model, context, k, threads, min_time); rc != 0) return rc;
      continue;
    }
    Shape s = base;
    if (!absl::SimpleAtoi(c, &s.context) || s.context < 2) {
      std::fprintf(stderr, "decode-bench: --context: expected numbers of at least 2\n");
      return 2;
    }
    InProcess(s, threads, min_time, bandwidth);
    if (a.Has("target")) {
      if (int rc = ThroughServer(s, a.Get("target"), min_time); rc != 0) return rc;
    }
  }
  return 0;
}

}  // namespace
}  // namespace attention

int main(int argc, char** argv) { return attention::Main(argc, argv); }
