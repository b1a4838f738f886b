#include "client/load_decode.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "client/load_recorder.h"
#include "core/model.h"
#include "core/reference.h"

namespace attention {
namespace client {
namespace {

constexpr size_t kPool = 4;  // distinct token sequences at most

// The reference outputs of every step of pool entry `tokens`: the causal
// forward over all its tokens with the model's weights, row by row.
absl::Status AddReferences(const Model& model, const std::vector<float>& tokens, Workload* w) {
  const int64_t rows = w->context + w->steps;
  AttentionArgs a;
  a.query = TensorView{DType::kFloat32, {1, rows, w->embed}, tokens.data(), tokens.size() * 4};
  a.self_attention = true;
  a.causal = true;
  a.num_heads = w->decode_options.num_heads();
  a.projection = &model.weights();
  absl::StatusOr<ReferenceResult> ref = ReferenceAttention(a);
  if (!ref.ok()) return ref.status();
  for (int64_t j = 0; j < w->steps; ++j) {
    ReferenceResult step;
    step.output_shape = {1, w->embed};
    const auto row = ref->output.begin() + (w->context + j) * w->embed;
    step.output.assign(row, row + w->embed);
    w->references.push_back(std::move(step));
  }
  return absl::OkStatus();
}

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// One sequence: its stream, prefill, then its steps (each settled in `rec`).
class Sequence {
 public:
  Sequence(const Workload& w, Channels& ch, const RunSettings& s, size_t k)
      : w_(w),
        entry_(k % w.tokens.size()),
        client_(ch.channels[k % ch.channels.size()]),
        stream_(&client_, CallOptions{s.timeout, ch.retries}),
        name_(absl::StrCat("load-", k)) {}

  absl::Status Prefill() {
    absl::StatusOr<v1::AttentionResponse> r = stream_.Append(Message(0, w_.context));
    return r.status();
  }

  // The steps, each sent once the one before is answered; `start` begins
  // the level.
  void Steps(Recorder* rec, std::chrono::steady_clock::time_point start) {
    for (int64_t j = 0; j < w_.steps; ++j) {
      RequestTimes t;
      t.sent_us = NowUs(start);
      rec->Sent(t);
      const int before = stream_.retries();
      absl::StatusOr<v1::AttentionResponse> r = stream_.Append(Message(w_.context + j, 1));
      t.done_us = NowUs(start);
      if (stream_.retries() > before) rec->Retried(stream_.retries() - before);
      const size_t index = entry_ * static_cast<size_t>(w_.steps) + static_cast<size_t>(j);
      rec->Done(ToGrpc(r.status()), r.ok() ? &*r : nullptr, index, t);
      if (!r.ok()) return;  // the sequence does not hold this token: it ends here
    }
    stream_.End(name_).IgnoreError();
    stream_.Close().IgnoreError();
  }

 private:
  v1::DecodeRequest Message(int64_t first, int64_t rows) const {
    v1::DecodeRequest r;
    r.set_sequence(name_);
    *r.mutable_options() = w_.decode_options;
    *r.mutable_input() =
        MakeTensor({rows, w_.embed}, w_.tokens[entry_].data() + first * w_.embed, w_.wire);
    return r;
  }

  const Workload& w_;
  const size_t entry_;
  AttentionClient client_;
  DecodeStream stream_;
  const std::string name_;
};

}  // namespace

absl::StatusOr<Workload> MakeDecodeWorkload(const CliArgs& args, AttentionClient& probe,
                                            double verify_percent) {
  Workload w;
  w.rpc = RpcKind::kDecode;
  const std::string model = args.Get("model");
  if (model.empty()) return absl::InvalidArgumentError("--rpc decode needs --model NAME");
  absl::StatusOr<int64_t> context = args.GetInt("context", 128);
  absl::StatusOr<int64_t> sequences = args.GetInt("sequences", 1);
  absl::StatusOr<int64_t> steps = args.GetInt("steps", 100);
  for (const auto* v : {&context, &sequences, &steps}) {
    if (!v->ok()) return v->status();
  }
  if (*context < 1 || *sequences < 1 || *sequences > 4096 || *steps < 1) {
    return absl::InvalidArgumentError(
        "--context and --steps must be positive, --sequences between 1 and 4096");
  }
  absl::StatusOr<DType> wire = ParseWireDType(args.Get("wire-dtype", "float32"));
  if (!wire.ok()) return wire.status();
  const std::string precision_name = args.Get("precision", "float32");
  absl::StatusOr<Precision> precision = ParsePrecision(precision_name);
  if (!precision.ok()) return precision.status();
  absl::StatusOr<v1::ListModelsResponse> models = probe.ListModels({10});
  if (!models.ok()) return models.status();
  const v1::ModelInfo* info = nullptr;
  for (const v1::ModelInfo& m : models->models()) {
    if (m.name() == model) info = &m;
  }
  if (info == nullptr)
    return absl::NotFoundError(absl::StrCat("--model ", model, ": not on the server"));
  w.context = *context;
  w.steps = *steps;
  w.sequences = *sequences;
  w.embed = info->embed_dim();
  w.wire = *wire;
  w.decode_options.set_model(model);
  w.decode_options.set_num_heads(static_cast<int32_t>(info->num_heads()));
  w.decode_options.set_causal(true);
  w.decode_options.set_precision(convert::ToWire(*precision));
  if (*wire == DType::kFloat16) w.tolerance = 1e-2;
  if (*wire == DType::kBFloat16 || *precision == Precision::kBFloat16) w.tolerance = 4e-2;
  const int64_t rows = w.context + w.steps;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < std::min<size_t>(kPool, static_cast<size_t>(w.sequences)); ++i) {
    std::vector<float> t(static_cast<size_t>(rows * w.embed));
    for (float& x : t) x = normal(rng);
    w.tokens.push_back(std::move(t));
  }
  v1::DecodeRequest step;
  step.set_sequence("load-0");
  step.set_position(w.context);
  *step.mutable_options() = w.decode_options;
  *step.mutable_input() = MakeTensor({1, w.embed}, w.tokens[0].data(), w.wire);
  w.request_bytes = static_cast<double>(step.ByteSizeLong());
  // A step: the projections of one token (8 E^2) and its attention over
  // about context + steps / 2 keys (4 E per key).
  const double E = static_cast<double>(w.embed);
  w.flops = 8 * E * E + 4 * E * (static_cast<double>(w.context) + w.steps / 2.0);
  w.description = absl::StrCat("decode model ", model, " E=", w.embed, " H=", info->num_heads(),
                               ": ", w.sequences, " sequence(s), context ", w.context, ", ",
                               w.steps, " one-token steps each (a request = a step)",
                               *precision == Precision::kBFloat16 ? ", bfloat16 keys" : "");
  if (verify_percent > 0) {
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModelToVerify(args, model);
    if (!m.ok()) return m.status();
    std::fprintf(stderr, "load: computing the reference of %zu sequence(s) for --verify...\n",
                 w.tokens.size());
    for (const std::vector<float>& t : w.tokens) {
      if (absl::Status s = AddReferences(**m, t, &w); !s.ok()) return s;
    }
  }
  return w;
}

LoadResult RunDecodeLevel(const Workload& w, Channels& ch, const RunSettings& s,
                          double verify_percent) {
  Recorder rec(w, verify_percent);
  const auto k = static_cast<size_t>(w.sequences);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (size_t i = 0; i < k; ++i) seqs.push_back(std::make_unique<Sequence>(w, ch, s, i));
  // Every sequence prefilled, then the level begins for all at once.
  absl::BlockingCounter prefilled(static_cast<int>(k));
  absl::Notification go;
  std::vector<absl::Status> prefill(k);
  std::chrono::steady_clock::time_point start;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < k; ++i) {
    threads.emplace_back([&, i] {
      prefill[i] = seqs[i]->Prefill();
      prefilled.DecrementCount();
      go.WaitForNotification();
      if (prefill[i].ok()) seqs[i]->Steps(&rec, start);
    });
  }
  prefilled.Wait();
  start = std::chrono::steady_clock::now();
  go.Notify();
  for (std::thread& t : threads) t.join();
  LoadResult r = rec.Snapshot();
  r.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (size_t i = 0; i < k; ++i) {
    if (prefill[i].ok()) continue;
    std::fprintf(stderr, "load: sequence %zu's prefill failed (its steps were not sent): %s: %s\n",
                 i, absl::StatusCodeToString(prefill[i].code()).c_str(),
                 std::string(prefill[i].message()).c_str());
  }
  return r;
}

}  // namespace client
}  // namespace attention
