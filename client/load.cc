// attention-client load: a load tester that measures this service honestly.
//
// - Closed loop (--concurrency N): N callers, each sending its next request
//   when the previous one is answered (unary), or N streams each keeping
//   --in-flight messages outstanding (--stream).
// - Open loop (--rate R): requests are due at fixed (constant) or random
//   (poisson) times and sent asynchronously, not when earlier ones finish.
//   Latency is reported both from the time a request was due (corrected: no
//   coordinated omission) and from its actual send; sends that left more than
//   1 ms late are counted as behind schedule.
// - Every request sent is counted exactly once, as OK or as an error status;
//   stream responses are checked for order and ids (a violation counts as lost).
// - --verify P checks P% of the responses against the core's naive reference.
// - Latencies go into bounded-memory log-linear histograms (<= 1% error).
#include "client/load.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/histogram.h"
#include "client/load_report.h"
#include "core/model.h"
#include "core/reference.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace attention {
namespace client {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    R"(attention-client load: load-tests a server and reports throughput and latency.

usage: attention-client [--target T] load [options]

what to send (random data unless .npy files are given):
  --rpc attention|self-attention|health   (default self-attention)
  --batch B --seq L [--kv-seq S] --embed E --heads H [--kv-heads G]
                            shapes (defaults: 1, 128, L, the model's or 512, the model's or 8)
  --model NAME              use a model the server has (its embed_dim and heads by default)
  --model-file PATH         that model's safetensors file, for --verify (default models/NAME.safetensors)
  --weights none|average|per-head    --causal    --wire-dtype float32|float16|bfloat16
  --input x.npy | --query q.npy --key k.npy --value v.npy   send these tensors instead

how to send:
  --concurrency N[,N...]    closed loop: N callers (a list sweeps, one row per level)
  --rate R[,R...]           open loop: R requests per second (a list sweeps)
  --arrival constant|poisson  open-loop arrivals (default constant)
  --duration SECONDS        measured time per level (default 10), or
  --requests N              requests per level
  --warmup SECONDS          load before measuring, excluded from the figures (default 1)
  --stream                  closed loop over bidirectional streams, --in-flight messages each (default 4)
  --connections N           channels (TCP connections) per target (default 1)
  --max-outstanding N       open loop: at most N requests unanswered (default 1000); a full
                            window delays sends, which shows as behind schedule
  --timeout SECONDS         per call (default 30)
  --target T                HOST:PORT, a comma-separated list (round robin), or dns:///NAME:PORT

checking and output:
  --verify PERCENT          check that share of responses against the naive reference
  --json FILE  --csv FILE  --html FILE     reports (a sweep writes one entry per level)
  --quiet                   no progress line

Exit code: 0, or 1 when a response was lost, out of order or failed --verify; 2 for bad usage.
)";

// ---------------------------------------------------------------- workload

struct Workload {
  std::string rpc;
  std::vector<v1::AttentionRequest> attention;
  std::vector<v1::SelfAttentionRequest> self;
  std::vector<ReferenceResult> references;  // per pool entry, when verifying
  double tolerance = 1e-4;
  double request_bytes = 0;
  double flops = 0;
  std::string description;

  size_t size() const { return rpc == "attention" ? attention.size() : self.size(); }
};

absl::StatusOr<Workload> MakeWorkload(const CliArgs& args, AttentionClient& probe,
                                      double verify_percent) {
  Workload w;
  w.rpc = args.Get("rpc", "self-attention");
  if (w.rpc != "attention" && w.rpc != "self-attention" && w.rpc != "health") {
    return absl::InvalidArgumentError("--rpc: expected attention, self-attention or health");
  }
  if (w.rpc == "health") {
    w.description = "grpc.health.v1.Health/Check";
    w.self.resize(1);
    return w;
  }
  const std::string wire_name = args.Get("wire-dtype", "float32");
  DType wire = DType::kFloat32;
  if (wire_name == "float16") {
    wire = DType::kFloat16;
    w.tolerance = 1e-2;
  } else if (wire_name == "bfloat16") {
    wire = DType::kBFloat16;
    w.tolerance = 4e-2;
  } else if (wire_name != "float32") {
    return absl::InvalidArgumentError("--wire-dtype: expected float32, float16 or bfloat16");
  }
  v1::AttentionOptions options;
  const std::string model = args.Get("model");
  int64_t E = 512, H = 8, kdim = 0, vdim = 0;
  if (!model.empty()) {
    absl::StatusOr<v1::ListModelsResponse> models = probe.ListModels({10});
    if (!models.ok()) return models.status();
    bool found = false;
    for (const v1::ModelInfo& m : models->models()) {
      if (m.name() != model) continue;
      found = true;
      E = m.embed_dim(), H = m.num_heads(), kdim = m.kdim(), vdim = m.vdim();
    }
    if (!found) return absl::NotFoundError(absl::StrCat("--model ", model, ": not on the server"));
    options.set_model(model);
  }
  auto get = [&](const char* name, int64_t fallback) -> absl::StatusOr<int64_t> {
    return args.GetInt(name, fallback);
  };
  absl::StatusOr<int64_t> B = get("batch", 1), L = get("seq", 128), embed = get("embed", E),
                          heads = get("heads", H);
  for (const auto* v : {&B, &L, &embed, &heads}) {
    if (!v->ok()) return v->status();
  }
  absl::StatusOr<int64_t> S = get("kv-seq", *L), kv_heads = get("kv-heads", 0);
  if (!S.ok()) return S.status();
  if (!kv_heads.ok()) return kv_heads.status();
  if (*B <= 0 || *L <= 0 || *S <= 0 || *embed <= 0 || *heads <= 0) {
    return absl::InvalidArgumentError(
        "--batch, --seq, --kv-seq, --embed, --heads must be positive");
  }
  E = *embed;
  if (kdim == 0) kdim = E;
  if (vdim == 0) vdim = E;
  if (model.empty() && *kv_heads > 0 && *heads % *kv_heads == 0) {
    kdim = vdim = E / *heads * *kv_heads;
  }
  options.set_num_heads(static_cast<int32_t>(*heads));
  options.set_num_kv_heads(static_cast<int32_t>(*kv_heads));
  options.set_causal(args.Switch("causal"));
  const std::string weights = args.Get("weights", "none");
  options.set_weights(weights == "average"    ? v1::WEIGHTS_AVERAGED
                      : weights == "per-head" ? v1::WEIGHTS_PER_HEAD
                                              : v1::WEIGHTS_NONE);

  // A pool of requests with different data (or the .npy tensors).
  const bool npy = args.Has("input") || args.Has("query");
  const int pool = npy ? 1 : 4;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  auto random = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> data(n);
    for (float& x : data) x = u(rng);
    return MakeTensor(shape, data.data(), wire);
  };
  auto from_npy = [&](const std::string& flag) -> absl::StatusOr<v1::Tensor> {
    absl::StatusOr<NpyArray> a = ReadNpy(args.Get(flag));
    if (!a.ok()) return a.status();
    return FromNpy(*a, wire);
  };
  for (int i = 0; i < pool; ++i) {
    if (w.rpc == "self-attention") {
      v1::SelfAttentionRequest r;
      if (npy) {
        absl::StatusOr<v1::Tensor> t = from_npy("input");
        if (!t.ok()) return t.status();
        *r.mutable_input() = *t;
      } else {
        *r.mutable_input() = random({*B, *L, E});
      }
      *r.mutable_options() = options;
      w.request_bytes = static_cast<double>(r.ByteSizeLong());
      w.self.push_back(std::move(r));
    } else {
      v1::AttentionRequest r;
      if (npy) {
        for (const auto& [flag, field] :
             {std::pair<std::string, v1::Tensor*>{"query", r.mutable_query()},
              std::pair<std::string, v1::Tensor*>{"key", r.mutable_key()},
              std::pair<std::string, v1::Tensor*>{"value", r.mutable_value()}}) {
          absl::StatusOr<v1::Tensor> t = from_npy(flag);
          if (!t.ok()) return t.status();
          *field = *t;
        }
      } else {
        *r.mutable_query() = random({*B, *L, E});
        *r.mutable_key() = random({*B, *S, kdim});
        *r.mutable_value() = random({*B, *S, vdim});
      }
      *r.mutable_options() = options;
      w.request_bytes = static_cast<double>(r.ByteSizeLong());
      w.attention.push_back(std::move(r));
    }
  }
  const double b = *B, l = *L, s = w.rpc == "self-attention" ? *L : *S;
  w.flops = 4.0 * b * l * s * E * (options.causal() ? 0.5 : 1.0);
  if (!model.empty()) w.flops += 2.0 * b * E * (2 * l * E + s * (kdim + vdim));
  w.description =
      absl::StrCat(w.rpc, " B=", *B, " L=", *L, w.rpc == "attention" ? absl::StrCat(" S=", *S) : "",
                   " E=", E, " H=", *heads, model.empty() ? "" : " model " + model,
                   options.causal() ? " causal" : "", " weights ", weights, " wire ", wire_name);

  if (verify_percent > 0) {
    std::unique_ptr<const Model> weights_model;
    if (!model.empty()) {
      const std::string path = args.Get("model-file", "models/" + model + ".safetensors");
      absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(model, path);
      if (!m.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--verify needs the model's weights: ", m.status().message(),
                         " (give --model-file PATH)"));
      }
      weights_model = std::move(*m);
    }
    const ProjectionWeights* pw = weights_model ? &weights_model->weights() : nullptr;
    std::fprintf(stderr, "load: computing %zu reference result(s) for --verify...\n", w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      AttentionArgs a;  // views of the request: exactly what the server reads
      ProjectionWeights no_inline;
      absl::Status read = w.rpc == "self-attention" ? wire::FromWire(w.self[i], &a, &no_inline)
                                                    : wire::FromWire(w.attention[i], &a, &no_inline);
      if (!read.ok()) return read;
      a.projection = pw;
      if (pw != nullptr && a.num_heads == 0) a.num_heads = weights_model->info().num_heads;
      absl::StatusOr<ReferenceResult> ref = ReferenceAttention(a);
      if (!ref.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the reference refuses this request: ", ref.status().message()));
      }
      w.references.push_back(std::move(*ref));
    }
  }
  return w;
}

// ---------------------------------------------------------------- channels and calls

struct Channels {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::AttentionService::Stub>> stubs;
  std::vector<std::unique_ptr<grpc::health::v1::Health::Stub>> health;
  std::atomic<uint64_t> next{0};

  size_t Pick() { return next++ % channels.size(); }
};

absl::Status OpenChannels(const std::string& target, int connections, Channels* out) {
  std::vector<std::string> targets = absl::StrSplit(target, ',', absl::SkipEmpty());
  if (targets.empty()) return absl::InvalidArgumentError("--target: empty");
  for (const std::string& t : targets) {
    for (int i = 0; i < connections; ++i) {
      grpc::ChannelArguments ch;
      ch.SetMaxReceiveMessageSize(INT32_MAX);
      ch.SetMaxSendMessageSize(INT32_MAX);
      ch.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own TCP connection
      ch.SetInt("attention.load.connection", i);
      if (t.rfind("dns:", 0) == 0) ch.SetLoadBalancingPolicyName("round_robin");
      auto channel = grpc::CreateCustomChannel(t, grpc::InsecureChannelCredentials(), ch);
      out->stubs.push_back(v1::AttentionService::NewStub(channel));
      out->health.push_back(grpc::health::v1::Health::NewStub(channel));
      out->channels.push_back(std::move(channel));
    }
  }
  return absl::OkStatus();
}

// One call in flight: its context and response live until the callback.
struct Call {
  grpc::ClientContext context;
  v1::AttentionResponse response;
  grpc::health::v1::HealthCheckRequest health_request;
  grpc::health::v1::HealthCheckResponse health_response;
  size_t index = 0;
  double scheduled_us = 0;
  double sent_us = 0;
};

void SetDeadline(double timeout_s, grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
}

// Starts `call` asynchronously; `done` runs on a gRPC thread.
void StartCall(const Workload& w, Channels& ch, Call* call, double timeout_s,
               std::function<void(const grpc::Status&)> done) {
  SetDeadline(timeout_s, &call->context);
  const size_t c = ch.Pick();
  if (w.rpc == "health") {
    ch.health[c]->async()->Check(&call->context, &call->health_request, &call->health_response,
                                 std::move(done));
  } else if (w.rpc == "attention") {
    ch.stubs[c]->async()->Attention(&call->context, &w.attention[call->index], &call->response,
                                    std::move(done));
  } else {
    ch.stubs[c]->async()->SelfAttention(&call->context, &w.self[call->index], &call->response,
                                        std::move(done));
  }
}

grpc::Status CallSync(const Workload& w, Channels& ch, Call* call, double timeout_s) {
  SetDeadline(timeout_s, &call->context);
  const size_t c = ch.Pick();
  if (w.rpc == "health") {
    return ch.health[c]->Check(&call->context, call->health_request, &call->health_response);
  }
  if (w.rpc == "attention") {
    return ch.stubs[c]->Attention(&call->context, w.attention[call->index], &call->response);
  }
  return ch.stubs[c]->SelfAttention(&call->context, w.self[call->index], &call->response);
}

// ---------------------------------------------------------------- recording

class Recorder {
 public:
  Recorder(const Workload& w, double verify_percent) : w_(w), verify_(verify_percent / 100) {}

  void Sent() { sent_++; }

  // One finished request. `corrected_us` < 0 in closed loop.
  void Done(const grpc::Status& s, const v1::AttentionResponse* response, size_t index,
            double latency_us, double corrected_us) {
    std::optional<std::string> mismatch;
    bool checked = false;
    if (s.ok() && response != nullptr && !w_.references.empty() && !(response->has_error())) {
      const int64_t n = verify_counter_++;
      if (std::floor((n + 1) * verify_) > std::floor(n * verify_)) {
        checked = true;
        mismatch = Check(*response, w_.references[index]);
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    r_.latency.Record(latency_us);
    if (corrected_us >= 0) r_.corrected.Record(corrected_us);
    const grpc::Status* status = &s;
    grpc::Status stream_error;
    if (s.ok() && response != nullptr && response->has_error()) {
      stream_error = grpc::Status(static_cast<grpc::StatusCode>(response->error().code()),
                                  response->error().message());
      status = &stream_error;
    }
    if (status->ok()) {
      ++r_.ok;
      if (response != nullptr) r_.response_bytes += static_cast<double>(response->ByteSizeLong());
    } else {
      const std::string code = StatusCodeName(status->error_code());
      if (r_.errors[code]++ == 0) r_.first_error[code] = status->error_message();
    }
    if (checked) {
      ++r_.checked;
      if (mismatch) {
        if (r_.mismatches++ == 0) r_.first_mismatch = *mismatch;
      }
    }
  }

  // A request whose response never came, or came out of order.
  void Lost(const std::string& why, int64_t count = 1) {
    std::lock_guard<std::mutex> lock(mu_);
    r_.lost += count;
    if (r_.first_lost.empty()) r_.first_lost = why;
    const std::string code = "LOST";
    r_.errors[code] += count;
    if (r_.first_error[code].empty()) r_.first_error[code] = why;
  }

  // A stream response that answered no outstanding message (not a request:
  // counted apart, and it fails the run like a lost one).
  void Unexpected(const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r_.unexpected++ == 0 && r_.first_lost.empty()) r_.first_lost = why;
  }

  void BehindSchedule() {
    std::lock_guard<std::mutex> lock(mu_);
    ++r_.behind_schedule;
  }

  // A copy of the figures so far (for the progress line and the report).
  LoadResult Snapshot() {
    std::lock_guard<std::mutex> lock(mu_);
    LoadResult r = r_;
    r.sent = sent_.load();
    return r;
  }

 private:
  std::optional<std::string> Check(const v1::AttentionResponse& r, const ReferenceResult& want) {
    absl::StatusOr<FloatTensor> out = ToFloat(r.output(), "output");
    if (!out.ok()) return std::string(out.status().message());
    if (out->shape != want.output_shape) {
      return absl::StrCat("output shape ", ShapeString(out->shape),
                          " != ", ShapeString(want.output_shape));
    }
    const double e = RelativeMaxError(out->data.data(), want.output);
    if (e > w_.tolerance) {
      return absl::StrCat("output differs from the reference: relative max error ", e,
                          " > tolerance ", w_.tolerance);
    }
    if (!want.weights.empty()) {
      absl::StatusOr<FloatTensor> wt = ToFloat(r.weights(), "weights");
      if (!wt.ok() || wt->shape != want.weights_shape) return std::string("weights shape differs");
      const double ew = RelativeMaxError(wt->data.data(), want.weights);
      if (ew > w_.tolerance) {
        return absl::StrCat("weights differ from the reference: relative max error ", ew);
      }
    }
    return std::nullopt;
  }

  const Workload& w_;
  const double verify_;
  std::atomic<int64_t> sent_{0};
  std::atomic<int64_t> verify_counter_{0};
  std::mutex mu_;
  LoadResult r_;
};

double NowUs(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

// ---------------------------------------------------------------- load models

struct RunSettings {
  bool open_loop = false;
  double level = 1;  // concurrency or rate
  std::string arrival = "constant";
  double duration = 10;
  int64_t requests = 0;  // 0 = by duration
  bool stream = false;
  int in_flight = 4;
  int64_t max_outstanding = 1000;
  double timeout = 30;
  bool progress = true;
};

// Prints a progress line every second until `stop`.
class Progress {
 public:
  Progress(Recorder& rec, const RunSettings& s, const std::string& label)
      : rec_(rec), enabled_(s.progress && isatty(2) && (s.duration > 3 || s.requests > 0)) {
    if (!enabled_) return;
    thread_ = std::thread([this, label] {
      const auto start = Clock::now();
      std::unique_lock<std::mutex> lock(mu_);
      while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; })) {
        const LoadResult r = rec_.Snapshot();
        const double t = std::chrono::duration<double>(Clock::now() - start).count();
        int64_t errors = 0;
        for (const auto& [code, n] : r.errors) errors += n;
        std::fprintf(stderr,
                     "\r%s  %5.1fs  sent %lld  ok %lld  errors %lld  %.1f req/s  p99 %.2f ms   ",
                     label.c_str(), t, static_cast<long long>(r.sent), static_cast<long long>(r.ok),
                     static_cast<long long>(errors), (r.ok + errors) / std::max(t, 1e-9),
                     r.latency.Percentile(99) / 1e3);
        std::fflush(stderr);
      }
      std::fprintf(stderr, "\r%*s\r", 100, "");
    });
  }
  ~Progress() {
    if (!enabled_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  Recorder& rec_;
  bool enabled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

bool TimeUp(const RunSettings& s, Clock::time_point start, int64_t issued) {
  if (s.requests > 0) return issued >= s.requests;
  return std::chrono::duration<double>(Clock::now() - start).count() >= s.duration;
}

void ClosedLoopUnary(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::atomic<int64_t> issued{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < static_cast<int>(s.level); ++t) {
    callers.emplace_back([&] {
      for (;;) {
        const int64_t i = issued++;
        if (TimeUp(s, start, i)) return;
        Call call;
        call.index = static_cast<size_t>(i) % w.size();
        rec.Sent();
        const double t0 = NowUs(start);
        grpc::Status st = CallSync(w, ch, &call, s.timeout);
        rec.Done(st, w.rpc == "health" ? nullptr : &call.response, call.index, NowUs(start) - t0,
                 -1);
      }
    });
  }
  for (std::thread& t : callers) t.join();
}

// One stream with up to in_flight messages outstanding; checks order and ids.
template <typename Request, typename Open>
void StreamWorker(const std::vector<Request>& pool, int worker, const RunSettings& s,
                  Clock::time_point start, std::atomic<int64_t>& issued, Recorder& rec, Open open) {
  grpc::ClientContext context;
  auto stream = open(&context);
  struct Pending {
    std::string id;
    size_t index;
    double sent_us;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> pending;
  bool reader_done = false;
  bool stalled = false;             // the oldest message waited longer than --timeout
  std::string violation;            // first order/id problem: the stream is abandoned
  std::vector<Request> mine(pool);  // ids are set per message
  // Cancels the stream when its oldest message has waited longer than --timeout
  // (a stalled server would otherwise block Write or Read for ever).
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!reader_done) {
      cv.wait_for(lock, std::chrono::milliseconds(50));
      if (!stalled && !pending.empty() &&
          NowUs(start) - pending.front().sent_us > s.timeout * 1e6) {
        stalled = true;
        context.TryCancel();
      }
    }
  });
  std::thread writer([&] {
    for (int64_t n = 0;; ++n) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock,
                [&] { return reader_done || static_cast<int>(pending.size()) < s.in_flight; });
        if (reader_done) break;
      }
      const int64_t i = issued++;
      if (TimeUp(s, start, i)) break;
      const size_t index = static_cast<size_t>(i) % mine.size();
      Request& r = mine[index];
      r.set_id(absl::StrCat(worker, ".", n));
      {
        std::lock_guard<std::mutex> lock(mu);
        pending.push_back({r.id(), index, NowUs(start)});
      }
      rec.Sent();
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
  });
  v1::AttentionResponse response;
  while (stream->Read(&response)) {
    Pending p;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (pending.empty() || pending.front().id != response.id()) {
        violation =
            absl::StrCat("stream response id '", response.id(), "' out of order (expected '",
                         pending.empty() ? "" : pending.front().id, "')");
        context.TryCancel();
        break;
      }
      p = pending.front();
      pending.pop_front();
    }
    cv.notify_all();
    rec.Done(grpc::Status::OK, &response, p.index, NowUs(start) - p.sent_us, -1);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    reader_done = true;
  }
  cv.notify_all();
  writer.join();
  watchdog.join();
  while (stream->Read(&response)) {
  }
  grpc::Status final_status = stream->Finish();
  if (stalled) {
    final_status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                "no stream response within --timeout; stream cancelled");
  }
  // Messages sent but never answered: the stream's status, or lost.
  std::lock_guard<std::mutex> lock(mu);
  if (!violation.empty() && pending.empty()) rec.Unexpected(violation);  // a response too many
  for (const Pending& p : pending) {
    if (!violation.empty()) {
      rec.Lost(violation);
    } else if (final_status.ok()) {
      rec.Lost("stream ended without answering message '" + p.id + "'");
    } else {
      rec.Done(final_status, nullptr, p.index, NowUs(start) - p.sent_us, -1);
    }
  }
}

void ClosedLoopStreams(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::atomic<int64_t> issued{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < static_cast<int>(s.level); ++t) {
    const size_t c = ch.Pick();
    workers.emplace_back([&, t, c] {
      // A stream that fails (its messages counted with its status) is replaced
      // by a new one until the level ends, so the concurrency holds.
      while (!TimeUp(s, start, issued.load())) {
        if (w.rpc == "attention") {
          StreamWorker(w.attention, t, s, start, issued, rec,
                       [&](grpc::ClientContext* ctx) { return ch.stubs[c]->StreamAttention(ctx); });
        } else {
          StreamWorker(w.self, t, s, start, issued, rec, [&](grpc::ClientContext* ctx) {
            return ch.stubs[c]->StreamSelfAttention(ctx);
          });
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
}

void OpenLoop(const Workload& w, Channels& ch, const RunSettings& s, Recorder& rec) {
  const auto start = Clock::now();
  std::mt19937_64 rng(11);
  std::exponential_distribution<double> gap(s.level);
  std::mutex mu;
  std::condition_variable cv;
  int64_t outstanding = 0;
  double due_s = 0;
  for (int64_t i = 0;; ++i) {
    if (s.requests > 0 ? i >= s.requests : due_s >= s.duration) break;
    const auto due =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(due_s));
    std::this_thread::sleep_until(due);
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return outstanding < s.max_outstanding; });
      ++outstanding;
    }
    auto* call = new Call;
    call->index = static_cast<size_t>(i) % w.size();
    call->scheduled_us = due_s * 1e6;
    call->sent_us = NowUs(start);
    if (call->sent_us - call->scheduled_us > 1000) rec.BehindSchedule();
    rec.Sent();
    StartCall(w, ch, call, s.timeout, [&, call](const grpc::Status& st) {
      const double now = NowUs(start);
      rec.Done(st, w.rpc == "health" ? nullptr : &call->response, call->index, now - call->sent_us,
               now - call->scheduled_us);
      delete call;
      std::lock_guard<std::mutex> lock(mu);
      --outstanding;
      cv.notify_all();
    });
    due_s += s.arrival == "poisson" ? gap(rng) : 1.0 / s.level;
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return outstanding == 0; });
}

LoadResult RunLevel(const Workload& w, Channels& ch, const RunSettings& s, double verify,
                    const std::string& label) {
  Recorder rec(w, verify);
  Progress progress(rec, s, label);
  const auto start = Clock::now();
  if (s.open_loop) {
    OpenLoop(w, ch, s, rec);
  } else if (s.stream) {
    ClosedLoopStreams(w, ch, s, rec);
  } else {
    ClosedLoopUnary(w, ch, s, rec);
  }
  LoadResult r = rec.Snapshot();
  r.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace

int RunLoad(const CliArgs& args) {
  if (args.Switch("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto usage = [](const std::string& problem) {
    std::fprintf(stderr, "attention-client load: %s\n(attention-client load --help for usage)\n",
                 problem.c_str());
    return 2;
  };
  static const std::set<std::string> kKnown = {
      "target",          "rpc",      "batch",    "seq",        "kv-seq",      "embed",
      "heads",           "kv-heads", "model",    "model-file", "weights",     "wire-dtype",
      "input",           "query",    "key",      "value",      "concurrency", "rate",
      "arrival",         "duration", "requests", "warmup",     "in-flight",   "connections",
      "max-outstanding", "timeout",  "verify",   "json",       "csv",         "html"};
  for (const auto& [name, value] : args.values) {
    if (!kKnown.count(name)) return usage("unknown option --" + name);
  }
  if (args.Has("concurrency") && args.Has("rate")) {
    return usage("give --concurrency (closed loop) or --rate (open loop), not both");
  }
  RunSettings s;
  s.open_loop = args.Has("rate");
  absl::StatusOr<std::vector<double>> levels =
      s.open_loop ? args.GetList("rate", {}) : args.GetList("concurrency", {1});
  absl::StatusOr<double> duration = args.GetDouble("duration", 10);
  absl::StatusOr<int64_t> requests = args.GetInt("requests", 0);
  absl::StatusOr<double> warmup = args.GetDouble("warmup", 1);
  absl::StatusOr<int64_t> in_flight = args.GetInt("in-flight", 4);
  absl::StatusOr<int64_t> connections = args.GetInt("connections", 1);
  absl::StatusOr<int64_t> max_outstanding = args.GetInt("max-outstanding", 1000);
  absl::StatusOr<double> timeout = args.GetDouble("timeout", 30);
  absl::StatusOr<double> verify = args.GetDouble("verify", 0);
  for (const absl::Status& st :
       {levels.status(), duration.status(), requests.status(), warmup.status(), in_flight.status(),
        connections.status(), max_outstanding.status(), timeout.status(), verify.status()}) {
    if (!st.ok()) return usage(std::string(st.message()));
  }
  for (double l : *levels) {
    if (!(l > 0) || (!s.open_loop && l != std::floor(l))) {
      return usage("--concurrency takes positive integers, --rate positive numbers");
    }
  }
  s.arrival = args.Get("arrival", "constant");
  if (s.arrival != "constant" && s.arrival != "poisson") {
    return usage("--arrival: expected constant or poisson");
  }
  s.duration = *duration;
  s.requests = *requests;
  s.stream = args.Switch("stream");
  s.in_flight = static_cast<int>(*in_flight);
  s.max_outstanding = *max_outstanding;
  s.timeout = *timeout;
  s.progress = !args.Switch("quiet");
  if (s.stream && s.open_loop) return usage("--stream runs a closed loop: use --concurrency");
  if (s.stream && args.Get("rpc") == "health")
    return usage("--stream does not apply to --rpc health");
  if (*in_flight < 1 || *connections < 1 || *max_outstanding < 1 || *timeout <= 0 ||
      *duration <= 0 || *requests < 0 || *warmup < 0 || *verify < 0 || *verify > 100) {
    return usage(
        "--in-flight, --connections, --max-outstanding, --timeout, --duration must be "
        "positive; --verify between 0 and 100");
  }

  const std::string target = args.Get("target", "localhost:50051");
  Channels ch;
  if (absl::Status st = OpenChannels(target, static_cast<int>(*connections), &ch); !st.ok()) {
    return usage(std::string(st.message()));
  }
  AttentionClient probe(ch.channels[0]);
  absl::StatusOr<Workload> w = MakeWorkload(args, probe, *verify);
  if (!w.ok()) {
    std::fprintf(stderr, "attention-client load: %s: %s\n",
                 absl::StatusCodeToString(w.status().code()).c_str(),
                 std::string(w.status().message()).c_str());
    return w.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }

  LoadReport report;
  report.target = target;
  report.workload = w->description;
  report.request_bytes = w->request_bytes;
  report.flops_per_request = w->flops;
  report.settings = absl::StrCat(
      s.open_loop
          ? absl::StrCat("open loop, ", s.arrival, " arrivals, max outstanding ", s.max_outstanding)
          : (s.stream ? absl::StrCat("closed loop over streams, ", s.in_flight, " in flight each")
                      : std::string("closed loop, unary")),
      ", ", s.requests > 0 ? absl::StrCat(s.requests, " requests") : absl::StrCat(s.duration, " s"),
      " per level, warmup ", *warmup, " s, ", *connections, " connection(s) per target, timeout ",
      s.timeout, " s, verify ", *verify, "%");
  std::printf("load: %s -> %s\nload: %s\n", w->description.c_str(), target.c_str(),
              report.settings.c_str());
  std::fflush(stdout);
  for (double level : *levels) {
    s.level = level;
    const std::string label =
        s.open_loop ? absl::StrCat("rate ", level, "/s") : absl::StrCat("concurrency ", level);
    if (*warmup > 0) {
      RunSettings warm = s;
      warm.duration = *warmup;
      warm.requests = 0;
      warm.progress = false;
      RunLevel(*w, ch, warm, 0, label);
    }
    LoadResult r = RunLevel(*w, ch, s, *verify, label);
    r.open_loop = s.open_loop;
    r.level = level;
    r.request_bytes = w->request_bytes;
    r.flops_per_request = w->flops;
    PrintResult(r, stdout);
    report.results.push_back(std::move(r));
  }
  if (report.results.size() > 1) PrintSweepTable(report, stdout);
  for (const auto& [flag, writer] :
       {std::pair<std::string, absl::Status (*)(const LoadReport&, const std::string&)>{"json",
                                                                                        WriteJson},
        {"csv", WriteCsv},
        {"html", WriteHtml}}) {
    if (!args.Has(flag)) continue;
    if (absl::Status st = writer(report, args.Get(flag)); !st.ok()) {
      std::fprintf(stderr, "attention-client load: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    std::printf("load: wrote %s\n", args.Get(flag).c_str());
  }
  for (const LoadResult& r : report.results) {
    if (r.lost > 0 || r.unexpected > 0 || r.mismatches > 0) return 1;
  }
  return 0;
}

}  // namespace client
}  // namespace attention
