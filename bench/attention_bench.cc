// attention-bench: times the core in-process (and optionally the same case
// through a running server) on random data, warm, and prints median and p90
// time, GFLOP/s (formula in bench/README.md) and peak RSS.
#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/timing.h"
#include "client/args.h"
#include "client/client.h"
#include "core/attention.h"
#include "core/safetensors.h"
#include "grpcpp/generic/generic_stub.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attention {
namespace {

using bench::InTurns;
using bench::PeakRssMb;
using bench::TimeIt;
using bench::Timing;
using bench::Turns;

constexpr char kUsage[] =
    R"(attention-bench: times multi-head attention in-process (and through a server).

usage: attention-bench --batch B --seq L [--kv-seq S] --embed E --heads H [--kv-heads G]
                       [--self] [--projection [--unprepared]] [--causal]
                       [--weights none|average|per-head]
                       [--precision float32|bfloat16]
                       [--threads N] [--min-time SECONDS] [--gap-ms N] [--json] [--roofline]
                       [--target HOST:PORT [--model NAME] [--vs-target HOST:PORT]]
       attention-bench --write-model PATH --embed E --heads H    (a random model file)

  --self         self-attention (query = key = value); otherwise cross-attention with S keys
  --projection   nn.MultiheadAttention projections (in-process: random weights, prepared once
                 as a server's model is; with --target: the server's --model NAME, or the same
                 weights sent inline without --model)
  --unprepared   in-process weights not prepared: read as given on every call, as weights
                 sent inline in a request are
  --precision    float32 (default) or bfloat16 products (float32 on a CPU without bfloat16
                 instructions: the report's precision says which ran)
  --threads N    OpenMP threads (default: every core)
  --min-time X   keep timing for X seconds (default 2), at least 5 runs
  --gap-ms N     sleep N ms before each timed call (not counted): the latency of a call that
                 arrives at an idle process (or server)
  --fused-min-keys N  without weights, the fused (online-softmax) path from N keys on
                 (default: the core's, 16384)
  --pack-min-keys N  from N keys, K^T and V copied per head before the heads run (default:
                 the core's, 2048)
  --roofline     also time oneDNN sgemm (bfloat16: oneDNN's bfloat16 matmul, float32 result)
                 of the dominant GEMM's size, in turns with the case (blocks of calls), for the
                 ratio to the limit (median of the turns' ratios)
  --target       also run the same case through a running attention-server (unary calls):
                 once with the typed client (serializes each request, parses each response),
                 once sending the request encoded once and measuring the response unparsed;
                 then in turns with in-process calls (blocks of calls; the median of the
                 turns' ratios is the figure that holds on a noisy machine): pre-encoded
                 calls one at a time, and 8 calls with 2 in flight (throughput)
  --vs-target    a second server, timed against --target in turns (pre-encoded calls): to
                 compare two builds or configurations of the server
  --json         one JSON object a line instead of the table
)";

struct Settings {
  int64_t B, L, S, E, H, Hkv;
  bool self, projection, causal, json, roofline;
  WeightsMode weights;
  Precision precision;  // what runs (EffectivePrecision of --precision)
  int threads;
  double min_time;
};

// bench/README.md: 8BLE^2 + 4BLSE for self-attention with projections (in
// general 2BE(2LE + S(kdim + vdim)) + 4BLSE); the attention part halved for
// causal, whose masked tiles are skipped.
double Flops(const Settings& s) {
  const double B = s.B, L = s.L, S = s.S, E = s.E;
  const double D = E / s.H;
  double attention = 4.0 * B * L * S * s.H * D;
  if (s.causal) attention /= 2;
  const double projection = s.projection ? 2.0 * B * E * (2 * L * E + 2 * S * E) : 0.0;
  return attention + projection;
}

// oneDNN sgemm of the dominant GEMM's size (the in-projections' work as one
// [B*L, E] x [E, 3E] product with projections, one head's scores
// [L, D] x [D, S] without), timed in turns with the case itself (blocks of
// 50 ms).
struct Roofline {
  double gflops = 0;  // sgemm, median over the turns
  double ratio = 0;   // ours / sgemm in GFLOP/s, median of the turns' ratios
};

// C [M, N] float32 = A [M, K] x B [K, N] on bfloat16 operands: oneDNN's
// matmul, B in the layout its kernel reads (as prepared weights are).
std::function<bool()> Bfloat16Matmul(int64_t M, int64_t N, int64_t K) {
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  auto engine = std::make_shared<dnnl::engine>(dnnl::engine::kind::cpu, 0);
  auto stream = std::make_shared<dnnl::stream>(*engine);
  const dnnl::memory::desc a_md({M, K}, dt::bf16, tag::ab), b_any({K, N}, dt::bf16, tag::any),
      c_md({M, N}, dt::f32, tag::ab);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_any, c_md), *engine);
  auto a = std::make_shared<dnnl::memory>(a_md, *engine);
  auto b = std::make_shared<dnnl::memory>(pd.weights_desc(), *engine);
  auto c = std::make_shared<dnnl::memory>(c_md, *engine);
  for (const auto& m : {a, b}) {  // bfloat16 0.5 everywhere (reordered B: any bytes will do)
    std::vector<uint16_t> halves(m->get_desc().get_size() / 2, 0x3f00);
    std::memcpy(m->get_data_handle(), halves.data(), halves.size() * 2);
  }
  auto matmul = std::make_shared<dnnl::matmul>(pd);
  return [=] {
    matmul->execute(*stream, {{DNNL_ARG_SRC, *a}, {DNNL_ARG_WEIGHTS, *b}, {DNNL_ARG_DST, *c}});
    stream->wait();
    return true;
  };
}

Roofline MeasureRoofline(const Settings& s, const std::function<bool()>& ours) {
  const int64_t M = s.projection ? s.B * s.L : s.L;
  const int64_t N = s.projection ? 3 * s.E : s.S;
  const int64_t K = s.projection ? s.E : s.E / s.H;
  std::vector<float> a(M * K, 0.5f), b(K * N, 0.25f), c(M * N);
  std::function<bool()> gemm = [&] {
    return dnnl::sgemm('N', 'N', M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, c.data(), N) ==
           dnnl::status::success;
  };
  if (s.precision == Precision::kBFloat16) gemm = Bfloat16Matmul(M, N, K);
  const Turns t = InTurns(ours, gemm, s.min_time, 0.05);
  if (t.turns == 0) return {};
  const double sgemm_flops = 2.0 * M * N * K;
  // A turn's ratio of rates is Flops / sgemm_flops x (sgemm's time / ours).
  return {sgemm_flops / (t.b_ms * 1e6), Flops(s) / sgemm_flops * t.median};
}

struct Data {
  FloatTensor q, k, v;
  FloatTensor in_w, in_b, out_w, out_b;
  ProjectionWeights projection;
  std::shared_ptr<const PreparedProjection> prepared;
};

void MakeData(const Settings& s, Data& d) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  auto fill = [&](FloatTensor& t, std::vector<int64_t> shape, float scale) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    t.shape = std::move(shape);
    t.data.resize(n);
    for (float& x : t.data) x = u(rng) * scale;
  };
  const int64_t D = s.E / s.H;
  const int64_t kv_dim = s.projection ? s.E : s.Hkv * D;
  fill(d.q, {s.B, s.L, s.E}, 1);
  if (!s.self) {
    fill(d.k, {s.B, s.S, kv_dim}, 1);
    fill(d.v, {s.B, s.S, kv_dim}, 1);
  }
  if (s.projection) {
    const float w = 1.0f / std::sqrt(static_cast<float>(s.E));
    fill(d.in_w, {3 * s.E, s.E}, w);
    fill(d.in_b, {3 * s.E}, 0.1f);
    fill(d.out_w, {s.E, s.E}, w);
    fill(d.out_b, {s.E}, 0.1f);
    d.projection.in_proj_weight = d.in_w.view();
    d.projection.in_proj_bias = d.in_b.view();
    d.projection.out_proj_weight = d.out_w.view();
    d.projection.out_proj_bias = d.out_b.view();
  }
}

AttentionArgs MakeArgs(const Settings& s, const Data& d) {
  AttentionArgs a;
  a.self_attention = s.self;
  a.query = d.q.view();
  if (!s.self) {
    a.key = d.k.view();
    a.value = d.v.view();
  }
  a.num_heads = s.H;
  a.num_kv_heads = s.projection ? 0 : s.Hkv;
  a.causal = s.causal;
  a.weights = s.weights;
  a.precision = s.precision;
  if (s.projection) a.projection = &d.projection;
  return a;
}

std::string CaseName(const Settings& s) {
  return absl::StrCat("B=", s.B, " L=", s.L, " S=", s.S, " E=", s.E, " H=", s.H,
                      s.Hkv != s.H ? absl::StrCat(" Hkv=", s.Hkv) : "", s.self ? " self" : " cross",
                      s.projection ? " proj" : "", s.causal ? " causal" : "",
                      s.weights == WeightsMode::kNone       ? ""
                      : s.weights == WeightsMode::kAveraged ? " w=average"
                                                            : " w=per-head");
}

void Report(const Settings& s, const char* mode, const Timing& t, const Roofline& roofline = {}) {
  const double gflops = Flops(s) / (t.median_ms * 1e6);
  if (s.json) {
    std::printf(
        "{\"case\": \"%s\", \"mode\": \"%s\", \"precision\": \"%s\", \"threads\": %d, "
        "\"runs\": %d, \"ms_median\": %.4f, \"ms_p90\": %.4f, \"gflops\": %.3f, "
        "\"peak_rss_mb\": %.1f",
        CaseName(s).c_str(), mode, client::PrecisionName(s.precision), s.threads, t.runs,
        t.median_ms, t.p90_ms, gflops, PeakRssMb());
    if (roofline.gflops > 0) {
      std::printf(", \"roofline_gflops\": %.3f, \"roofline_ratio\": %.3f", roofline.gflops,
                  roofline.ratio);
    }
    std::printf("}\n");
  } else {
    std::printf(
        "%-12s %s  %s threads=%d runs=%d  median %.3f ms  p90 %.3f ms  %.1f GFLOP/s  "
        "peak RSS %.0f MB",
        mode, CaseName(s).c_str(), client::PrecisionName(s.precision), s.threads, t.runs,
        t.median_ms, t.p90_ms, gflops, PeakRssMb());
    if (roofline.gflops > 0) {
      const char* limit = s.precision == Precision::kBFloat16 ? "bf16 matmul" : "sgemm";
      std::printf("  (%s %.1f GFLOP/s; ours/%s %.0f%%)", limit, roofline.gflops, limit,
                  100 * roofline.ratio);
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

// `calls` calls of `method` with a request already encoded, up to
// `in_flight` of them outstanding at once (more than one: a client that sends
// the next request before the last answer is back, so the server's transfers
// overlap its computation). Responses are received whole but not parsed
// (only their size is checked).
absl::Status PipelinedCalls(grpc::GenericStub& stub, const std::string& method,
                            const grpc::ByteBuffer& request, size_t output_bytes, int in_flight,
                            int calls) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    int started = 0, finished = 0;
    absl::Status status;
  } shared;
  struct InFlightCall {
    grpc::ClientContext ctx;
    grpc::ByteBuffer response;
  };
  // Starts one call that shared.started already counts; its completion
  // starts the next (outside the lock) while calls remain.
  std::function<void()> start = [&] {
    auto* call = new InFlightCall;
    client::ApplyOptions({60}, &call->ctx);
    stub.UnaryCall(&call->ctx, method, grpc::StubOptions(), &request, &call->response,
                   [&, call](const grpc::Status& r) {
                     absl::Status s = client::FromGrpcStatus(r);
                     if (s.ok() && call->response.Length() < output_bytes) {
                       s = absl::InternalError("a response shorter than the output");
                     }
                     delete call;
                     bool another = false;
                     {
                       std::lock_guard<std::mutex> lock(shared.mu);
                       if (!s.ok() && shared.status.ok()) shared.status = s;
                       ++shared.finished;
                       another = shared.started < calls && shared.status.ok();
                       if (another) ++shared.started;
                       shared.cv.notify_one();
                     }
                     if (another) start();  // shared lives on: finished < started
                   });
  };
  const int first = std::min(in_flight, calls);
  {
    std::lock_guard<std::mutex> lock(shared.mu);
    shared.started = first;
  }
  for (int i = 0; i < first; ++i) start();
  std::unique_lock<std::mutex> lock(shared.mu);
  shared.cv.wait(lock, [&] { return shared.finished == shared.started; });
  return shared.status;
}

// A ratio measured in turns; `inverse` reports a / b (a share of a's speed).
void ReportTurns(const Settings& s, const char* mode, const char* what, const Turns& t,
                 bool inverse) {
  if (t.turns == 0) {  // a side failed (its status is reported by the caller)
    std::fprintf(stderr, "attention-bench: %s: a call failed, no figure\n", mode);
    return;
  }
  const double median = inverse ? 1 / t.median : t.median;
  const double low = inverse ? 1 / t.high : t.low, high = inverse ? 1 / t.low : t.high;
  if (s.json) {
    std::printf(
        "{\"case\": \"%s\", \"mode\": \"%s\", \"threads\": %d, \"turns\": %d, "
        "\"ratio_median\": %.4f, \"ratio_min\": %.4f, \"ratio_max\": %.4f}\n",
        CaseName(s).c_str(), mode, s.threads, t.turns, median, low, high);
  } else {
    std::printf("%s in %d turns: median %.3f (%.3f to %.3f)\n", what, t.turns, median, low, high);
  }
  std::fflush(stdout);
}

int TargetFailed(const std::string& target, const absl::Status& status) {
  std::fprintf(stderr, "attention-bench: %s: %s\n", target.c_str(), status.ToString().c_str());
  return 1;
}

// The same case (`d`, `args`) through the server at --target (and
// --vs-target): typed calls, pre-encoded calls, and both in turns with
// in-process calls; `local` is the in-process timing. Returns the exit code.
int RunAgainstTarget(const client::CliArgs& a, const Settings& s, const Data& d,
                     const AttentionArgs& args, const ComputeOptions& options, VectorOutputs& out,
                     const Timing& local) {
  absl::Status status;
  std::shared_ptr<grpc::Channel> channel = client::AttentionClient::Connect(a.Get("target"));
  client::AttentionClient c(channel);
  // The same options on the wire; the server's model instead of inline weights if named.
  v1::AttentionOptions o = convert::ToWire(args);
  if (s.projection && a.Has("model")) {
    o.clear_projection();
    o.set_model(a.Get("model"));
  }
  v1::SelfAttentionRequest self_req;
  v1::AttentionRequest req;
  if (s.self) {
    *self_req.mutable_input() = client::MakeTensor(d.q.shape, d.q.data.data(), DType::kFloat32);
    *self_req.mutable_options() = o;
  } else {
    *req.mutable_query() = client::MakeTensor(d.q.shape, d.q.data.data(), DType::kFloat32);
    *req.mutable_key() = client::MakeTensor(d.k.shape, d.k.data.data(), DType::kFloat32);
    *req.mutable_value() = client::MakeTensor(d.v.shape, d.v.data.data(), DType::kFloat32);
    *req.mutable_options() = o;
  }
  // 1. The typed client, as an application uses it: each call serializes the
  // request and parses the response.
  Timing remote = TimeIt(
      [&] {
        absl::StatusOr<v1::AttentionResponse> r =
            s.self ? c.SelfAttention(self_req, {60}) : c.Attention(req, {60});
        status = r.status();
        return r.ok();
      },
      s.min_time);
  if (!status.ok()) return TargetFailed(a.Get("target"), status);
  Report(s, "end-to-end", remote);
  // 2. The request encoded once and the response only measured, not parsed:
  // what the server costs when its client's work is done elsewhere (here
  // the client shares the server's cores, as a remote client would not).
  const std::string encoded = s.self ? self_req.SerializeAsString() : req.SerializeAsString();
  grpc::Slice slice(encoded);
  const grpc::ByteBuffer request_bytes(&slice, 1);
  const size_t output_bytes = out.output.data.size() * sizeof(float);
  grpc::GenericStub generic(channel);
  const std::string method = s.self ? "/attention.v1.AttentionService/SelfAttention"
                                    : "/attention.v1.AttentionService/Attention";
  auto raw_call = [&] {
    status = PipelinedCalls(generic, method, request_bytes, output_bytes, 1, 1);
    return status.ok();
  };
  Timing raw = TimeIt(raw_call, s.min_time);
  if (!status.ok()) return TargetFailed(a.Get("target"), status);
  Report(s, "end-to-end-pre-encoded", raw);
  if (!s.json) {
    std::printf(
        "end-to-end throughput = %.0f%% of in-process (typed client), %.0f%% (pre-encoded "
        "request, response not parsed)\n",
        100 * local.median_ms / remote.median_ms, 100 * local.median_ms / raw.median_ms);
  }
  // The same ratio from blocks in turns (in-process, then pre-encoded end to
  // end): robust to the machine drifting between the two windows above.
  const Turns e2e =
      InTurns([&] { return ComputeAttention(args, options, &out).ok(); }, raw_call, s.min_time);
  if (!status.ok()) return TargetFailed(a.Get("target"), status);
  ReportTurns(s, "end-to-end-in-turns",
              "end-to-end throughput (pre-encoded, 1 call in flight) / in-process throughput", e2e,
              true);
  // Throughput with two calls outstanding, in turns with in-process calls
  // (blocks of 8 calls each side).
  constexpr int kPipelined = 8;
  const Turns pipelined = InTurns(
      [&] {
        for (int i = 0; i < kPipelined; ++i) {
          if (!ComputeAttention(args, options, &out).ok()) return false;
        }
        return true;
      },
      [&] {
        status = PipelinedCalls(generic, method, request_bytes, output_bytes, 2, kPipelined);
        return status.ok();
      },
      s.min_time);
  if (!status.ok()) return TargetFailed(a.Get("target"), status);
  ReportTurns(s, "end-to-end-2-in-flight",
              "end-to-end throughput with 2 calls in flight / in-process throughput", pipelined,
              true);
  if (a.Has("vs-target")) {
    grpc::GenericStub other(client::AttentionClient::Connect(a.Get("vs-target")));
    absl::Status other_status;
    const Turns vs = InTurns(
        raw_call,
        [&] {
          other_status = PipelinedCalls(other, method, request_bytes, output_bytes, 1, 1);
          return other_status.ok();
        },
        s.min_time);
    if (!status.ok()) return TargetFailed(a.Get("target"), status);
    if (!other_status.ok()) return TargetFailed(a.Get("vs-target"), other_status);
    ReportTurns(s, "vs-target", "--vs-target time / --target time (pre-encoded)", vs, false);
  }
  return 0;
}

int Usage(const std::string& problem) {
  std::fprintf(stderr, "attention-bench: %s\n(attention-bench --help for usage)\n",
               problem.c_str());
  return 2;
}

// The settings of `a` (checked) and the process-wide --gap-ms. Errors:
// InvalidArgument naming the flag (an unknown option, a bad number or mode).
absl::StatusOr<Settings> ParseSettings(const client::CliArgs& a) {
  if (absl::Status st =
          a.CheckKnown({"batch", "seq", "kv-seq", "embed", "heads", "kv-heads", "weights",
                        "threads", "min-time", "gap-ms", "fused-min-keys", "pack-min-keys",
                        "target", "model", "vs-target", "write-model", "precision"});
      !st.ok()) {
    return st;
  }
  Settings s{};
  int64_t* ints[] = {&s.B, &s.L, &s.S, &s.E, &s.H, &s.Hkv};
  const char* names[] = {"batch", "seq", "kv-seq", "embed", "heads", "kv-heads"};
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<int64_t> v = a.GetInt(names[i], 0);
    if (!v.ok()) return v.status();
    *ints[i] = *v;
  }
  if (s.S == 0) s.S = s.L;
  if (s.B == 0) s.B = 1;
  if (s.Hkv == 0) s.Hkv = s.H;
  s.self = a.Switch("self");
  if (s.self) s.S = s.L;
  s.projection = a.Switch("projection");
  s.causal = a.Switch("causal");
  s.json = a.Switch("json");
  s.roofline = a.Switch("roofline");
  absl::StatusOr<WeightsMode> weights = client::ParseWeightsMode(a.Get("weights", "none"));
  absl::StatusOr<Precision> precision = client::ParsePrecision(a.Get("precision", "float32"));
  absl::StatusOr<int64_t> threads = a.GetInt("threads", 0);
  absl::StatusOr<double> min_time = a.GetDouble("min-time", 2);
  absl::StatusOr<double> gap_ms = a.GetDouble("gap-ms", 0);
  for (const absl::Status& st : {weights.status(), precision.status(), threads.status(),
                                 min_time.status(), gap_ms.status()}) {
    if (!st.ok()) return st;
  }
  s.weights = *weights;
  s.precision = EffectivePrecision(*precision);
  s.threads = static_cast<int>(*threads);
  if (s.threads <= 0) s.threads = omp_get_num_procs();
  s.min_time = *min_time;
  bench::g_gap_ms = *gap_ms;
  if (a.Has("write-model") && s.L <= 0) s.L = 1;  // only the weights are written
  return s;
}

int Main(int argc, char** argv) {
  absl::StatusOr<client::CliArgs> parsed = client::ParseArgs(
      argc, argv, {"self", "projection", "causal", "json", "roofline", "unprepared", "help"});
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  if (parsed->Switch("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!parsed->command.empty()) return Usage("unexpected argument '" + parsed->command + "'");
  const client::CliArgs& a = *parsed;
  absl::StatusOr<Settings> settings = ParseSettings(a);
  if (!settings.ok()) return Usage(std::string(settings.status().message()));
  Settings s = *settings;
  if (s.E <= 0 || s.H <= 0 || s.L <= 0 || s.E % s.H != 0) {
    std::fprintf(stderr, "%s\nneed --seq, --embed and --heads (dividing --embed)\n", kUsage);
    return 2;
  }
  omp_set_num_threads(s.threads);

  Data d;
  if (a.Has("write-model")) {
    s.projection = true;
    s.self = true;
    MakeData(s, d);
    const std::string bytes = SerializeSafetensors({{"in_proj_weight", d.in_w.view()},
                                                    {"in_proj_bias", d.in_b.view()},
                                                    {"out_proj.weight", d.out_w.view()},
                                                    {"out_proj.bias", d.out_b.view()}},
                                                   {{"num_heads", std::to_string(s.H)}});
    const std::string path = a.Get("write-model");
    FILE* f = std::fopen(path.c_str(), "wb");
    const bool written =
        f != nullptr && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    if (f != nullptr && std::fclose(f) != 0) return 1;
    if (!written) {
      std::fprintf(stderr, "attention-bench: --write-model %s: cannot write (%s)\n", path.c_str(),
                   std::strerror(errno));
      return 1;
    }
    std::printf(
        "wrote %s: a random model, embed_dim %d, %d heads (serve it with --model NAME=%s)\n",
        path.c_str(), static_cast<int>(s.E), static_cast<int>(s.H), path.c_str());
    return 0;
  }
  MakeData(s, d);
  if (s.projection && !a.Switch("unprepared")) {  // as a model's weights are, once
    absl::StatusOr<std::shared_ptr<const PreparedProjection>> prepared =
        PrepareProjection(d.projection);
    if (!prepared.ok()) {
      std::fprintf(stderr, "attention-bench: %s\n", prepared.status().ToString().c_str());
      return 1;
    }
    d.prepared = *std::move(prepared);
    d.projection.prepared = d.prepared.get();
  }
  const AttentionArgs args = MakeArgs(s, d);
  ComputeOptions options;
  options.max_threads = s.threads;
  options.max_memory_bytes = int64_t{1} << 40;
  for (const auto& [flag, field] :
       {std::pair<const char*, int64_t*>{"fused-min-keys", &options.fused_min_keys},
        {"pack-min-keys", &options.pack_min_keys}}) {
    if (!a.Has(flag)) continue;
    absl::StatusOr<int64_t> v = a.GetInt(flag, 0);
    if (!v.ok()) return Usage(std::string(v.status().message()));
    *field = *v;
  }
  VectorOutputs out;
  absl::Status status;
  Timing local = TimeIt(
      [&] {
        status = ComputeAttention(args, options, &out);
        return status.ok();
      },
      s.min_time);
  if (!status.ok()) {
    std::fprintf(stderr, "attention-bench: %s\n", status.ToString().c_str());
    return 1;
  }
  Report(s, "in-process", local,
         s.roofline ? MeasureRoofline(s, [&] { return ComputeAttention(args, options, &out).ok(); })
                    : Roofline{});

  if (a.Has("target")) return RunAgainstTarget(a, s, d, args, options, out, local);
  return 0;
}

}  // namespace
}  // namespace attention

int main(int argc, char** argv) { return attention::Main(argc, argv); }
