#include "client/cli.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "client/load.h"
#include "core/model.h"
#include "core/safetensors.h"

namespace attention {
namespace client {
namespace {

constexpr char kUsage[] = R"(attention-client: calls the Attention Service.

usage: attention-client [--target HOST:PORT] COMMAND [options]

commands:
  attention       multi-head attention: --query q.npy --key k.npy --value v.npy
  self-attention  multi-head self-attention: --input x.npy
  models          list the server's models and limits
  decode          incremental decoding on one StreamDecode stream: --input x.npy --model NAME
                  (or --query/--key/--value with --heads): the first --prefill N rows as one
                  message, then one row a message; --out gets the rows concatenated (equal to
                  the causal forward over x); prints the steps' latency and bytes sent
  health          print the server's health (SERVING / NOT_SERVING); exit 0 when serving
  load            load test (see attention-client load --help)

options of attention and self-attention:
  --heads N                 query heads (0 or omitted with --model: the model's)
  --kv-heads N              key/value heads (grouped-query attention)
  --scale X                 score scale (default 1/sqrt(head_dim))
  --causal                  query i attends keys j <= i
  --attn-mask m.npy         bool (true = may not attend) or float (added): [L,S], [B*H,L,S], rank 4
  --key-padding-mask p.npy  bool (true = ignore key) or float (added): [B,S]
  --model NAME              a model the server has loaded (see `models`)
  --projection F.safetensors  nn.MultiheadAttention weights sent inline
  --weights none|average|per-head   attention weights to return (default none)
  --weights-out w.npy       where to write the weights (float32)
  --wire-dtype float32|float16|bfloat16  dtype of tensors on the wire (output comes back in it;
                            a bfloat16 output is written as float32 .npy)
  --precision float32|bfloat16  arithmetic of the products (default float32; bfloat16:
                            bfloat16 inputs, float32 accumulation, on CPUs that have it)
  --out o.npy               where to write the output
  --timeout SECONDS         deadline of the call (default none)
  --id ID                   request id (echoed by the server)

options of decode (and --model, --heads, --kv-heads, --scale, --weights, --weights-out,
--wire-dtype, --precision (bfloat16: keys and values held in bfloat16), --out as above):
  --prefill N               rows sent in the first message (default 1)
  --sequence NAME           the sequence's name on the stream (default "cli")
  --no-causal               queries attend every key held (default: causal)

common:
  --target HOST:PORT        server (default localhost:50051); also a comma-separated list of
                            IPv4 HOST:PORT or dns:///name:port, balanced round robin
  --retries N               retry a call that failed with UNAVAILABLE (or was reset or cancelled
                            by a replica or proxy) up to N times (default 0; for requests under
                            256 KiB gRPC's own retry policy does it, and caps N at 4)
  --help                    this text

.npy files: float32, float16 or bool, C order. A failed call prints the gRPC status code
name and the server's message on stderr and exits 1 (so does an unreadable input file, with
its own message); bad usage (unknown option or command, bad option value) exits 2.
)";

const std::set<std::string> kSwitches = {"causal", "help", "stream", "quiet", "tls", "no-causal"};

int Usage(const std::string& problem) {
  std::fprintf(stderr, "attention-client: %s\n(attention-client --help for usage)\n",
               problem.c_str());
  return 2;
}

// The channel's security, once known, so that failures can say what to
// check on a TLS channel.
ChannelSecurity g_security;

int Failed(const absl::Status& status) {
  const absl::Status s = ExplainTlsFailure(status, g_security);
  std::fprintf(stderr, "attention-client: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return 1;
}

// A problem found before calling: a bad option value is usage (exit 2); an
// unreadable file is reported like a failed call (exit 1).
int Local(const absl::Status& s) {
  if (absl::StartsWith(s.message(), "--")) return Usage(std::string(s.message()));
  return Failed(s);
}

absl::StatusOr<v1::Tensor> NpyTensor(const CliArgs& args, const std::string& flag, DType wire) {
  absl::StatusOr<NpyArray> a = ReadNpy(args.Get(flag));
  if (!a.ok()) return a.status();
  return FromNpy(*a, wire);
}

// Inline projection weights from a safetensors file (tensor names as in
// nn.MultiheadAttention's state_dict).
absl::Status LoadProjection(const std::string& path, v1::AttentionOptions* options) {
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
  if (!file.ok()) return file.status();
  absl::StatusOr<ProjectionWeights> weights = ProjectionFromTensors(file->tensors, path);
  if (!weights.ok()) return weights.status();
  *options->mutable_projection() = convert::ToWire(*weights);
  if (options->num_heads() == 0) {
    auto heads = file->metadata.find("num_heads");
    int64_t h = 0;
    if (heads != file->metadata.end() && absl::SimpleAtoi(heads->second, &h)) {
      options->set_num_heads(static_cast<int32_t>(h));
    }
  }
  return absl::OkStatus();
}

absl::Status FillOptions(const CliArgs& args, v1::AttentionOptions* o) {
  absl::StatusOr<int64_t> heads = args.GetInt("heads", 0);
  absl::StatusOr<int64_t> kv_heads = args.GetInt("kv-heads", 0);
  if (!heads.ok()) return heads.status();
  if (!kv_heads.ok()) return kv_heads.status();
  o->set_num_heads(static_cast<int32_t>(*heads));
  o->set_num_kv_heads(static_cast<int32_t>(*kv_heads));
  if (args.Has("scale")) {
    absl::StatusOr<double> scale = args.GetDouble("scale", 0);
    if (!scale.ok()) return scale.status();
    o->set_scale(static_cast<float>(*scale));
  }
  o->set_causal(args.switches.count("causal") > 0);
  for (const auto& [flag, field] :
       {std::pair<std::string, v1::Tensor*>{"attn-mask", o->mutable_attn_mask()},
        std::pair<std::string, v1::Tensor*>{"key-padding-mask", o->mutable_key_padding_mask()}}) {
    if (!args.Has(flag)) continue;
    absl::StatusOr<v1::Tensor> t = NpyTensor(args, flag, DType::kFloat32);
    if (!t.ok()) return t.status();
    *field = std::move(*t);
  }
  if (!args.Has("attn-mask")) o->clear_attn_mask();
  if (!args.Has("key-padding-mask")) o->clear_key_padding_mask();
  absl::StatusOr<WeightsMode> weights = ParseWeightsMode(args.Get("weights", "none"));
  if (!weights.ok()) return weights.status();
  o->set_weights(WireWeightsMode(*weights));
  o->set_model(args.Get("model"));
  absl::StatusOr<Precision> precision = ParsePrecision(args.Get("precision", "float32"));
  if (!precision.ok()) return precision.status();
  o->set_precision(convert::ToWire(*precision));
  if (args.Has("projection")) return LoadProjection(args.Get("projection"), o);
  return absl::OkStatus();
}

absl::Status WriteResults(const CliArgs& args, const v1::AttentionResponse& r) {
  for (const auto& [tensor, flag, name] :
       {std::tuple<const v1::Tensor*, std::string, std::string>{&r.output(), "out", "output"},
        std::tuple<const v1::Tensor*, std::string, std::string>{&r.weights(), "weights-out",
                                                                "weights"}}) {
    if (tensor->shape_size() == 0) continue;
    absl::StatusOr<NpyArray> a = ToNpy(*tensor, name);
    if (!a.ok()) return a.status();
    std::string where = "(not saved: give --" + flag + " FILE.npy)";
    if (args.Has(flag)) {
      if (absl::Status s = WriteNpy(args.Get(flag), *a); !s.ok()) return s;
      where = "-> " + args.Get(flag);
    }
    std::printf("%s %s %s %s\n", name.c_str(), ShapeString(a->shape).c_str(),
                v1::DataType_Name(tensor->dtype()).c_str(), where.c_str());
  }
  if (args.Has("precision"))
    std::printf("precision %s\n", v1::Precision_Name(r.precision()).c_str());
  return absl::OkStatus();
}

// --timeout (default `default_timeout`) and --retries.
absl::StatusOr<CallOptions> CallOptionsFrom(const CliArgs& args, double default_timeout) {
  absl::StatusOr<double> timeout = args.GetDouble("timeout", default_timeout);
  if (!timeout.ok()) return timeout.status();
  absl::StatusOr<int64_t> retries = args.GetInt("retries", 0);
  if (!retries.ok()) return retries.status();
  if (*retries < 0 || *retries > 100) {
    return absl::InvalidArgumentError("--retries: expected 0 to 100");
  }
  return CallOptions{*timeout, static_cast<int>(*retries)};
}

int RunAttention(const CliArgs& args, AttentionClient& client, bool self) {
  absl::StatusOr<DType> wire = ParseWireDType(args.Get("wire-dtype", "float32"));
  if (!wire.ok()) return Usage(std::string(wire.status().message()));
  absl::StatusOr<CallOptions> options = CallOptionsFrom(args, 0);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  const CallOptions& call = *options;
  absl::StatusOr<v1::AttentionResponse> response;
  if (self) {
    if (!args.Has("input")) return Usage("self-attention needs --input x.npy");
    v1::SelfAttentionRequest req;
    req.set_id(args.Get("id"));
    absl::StatusOr<v1::Tensor> input = NpyTensor(args, "input", *wire);
    if (!input.ok()) return Failed(input.status());
    *req.mutable_input() = std::move(*input);
    if (absl::Status s = FillOptions(args, req.mutable_options()); !s.ok()) return Local(s);
    response = client.SelfAttention(req, call);
  } else {
    if (!args.Has("query") || !args.Has("key") || !args.Has("value")) {
      return Usage("attention needs --query q.npy --key k.npy --value v.npy");
    }
    v1::AttentionRequest req;
    req.set_id(args.Get("id"));
    for (const auto& [flag, field] :
         {std::pair<std::string, v1::Tensor*>{"query", req.mutable_query()},
          std::pair<std::string, v1::Tensor*>{"key", req.mutable_key()},
          std::pair<std::string, v1::Tensor*>{"value", req.mutable_value()}}) {
      absl::StatusOr<v1::Tensor> t = NpyTensor(args, flag, *wire);
      if (!t.ok()) return Failed(t.status());
      *field = std::move(*t);
    }
    if (absl::Status s = FillOptions(args, req.mutable_options()); !s.ok()) return Local(s);
    response = client.Attention(req, call);
  }
  if (!response.ok()) return Failed(response.status());
  if (absl::Status s = WriteResults(args, *response); !s.ok()) return Failed(s);
  return 0;
}

// Rows [first, first + count) of a [T, W] or [1, T, W] array, as a wire tensor.
v1::Tensor RowsOf(const FloatTensor& a, int64_t first, int64_t count, DType wire) {
  const int64_t width = a.shape.back();
  std::vector<int64_t> shape = a.shape;
  shape[shape.size() - 2] = count;
  return MakeTensor(shape, a.data.data() + first * width, wire);
}

// The decode's percentiles of step latency (ms), from sorted `ms`.
std::string Percentiles(std::vector<double> ms) {
  if (ms.empty()) return "no steps";
  std::sort(ms.begin(), ms.end());
  auto at = [&](double p) {
    return ms[static_cast<size_t>(p * static_cast<double>(ms.size() - 1))];
  };
  return absl::StrFormat("p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms", at(0.5), at(0.9),
                         at(0.99), ms.back());
}

// Zero-padded rows of one message's weights ([t, s] or [H, t, s]) into the
// whole decode's ([T, S] or [H, T, S]) at row `row`.
void PlaceWeights(const FloatTensor& w, int64_t row, int64_t rows, int64_t keys,
                  std::vector<float>* all) {
  const size_t r = w.shape.size();
  const int64_t heads = r >= 3 ? w.shape[r - 3] : 1, t = w.shape[r - 2], s = w.shape[r - 1];
  if (all->empty()) all->assign(heads * rows * keys, 0.0f);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < t; ++i) {
      std::copy_n(w.data.data() + (h * t + i) * s, s, all->data() + (h * rows + row + i) * keys);
    }
  }
}

int RunDecode(const CliArgs& args, AttentionClient& client) {
  absl::StatusOr<DType> wire = ParseWireDType(args.Get("wire-dtype", "float32"));
  if (!wire.ok()) return Usage(std::string(wire.status().message()));
  absl::StatusOr<int64_t> prefill = args.GetInt("prefill", 1);
  if (!prefill.ok() || *prefill < 1) return Usage("--prefill: expected a count of at least 1");
  const bool self = args.Has("input");
  if (self == (args.Has("query") || args.Has("key") || args.Has("value")) ||
      (!self && !(args.Has("query") && args.Has("key") && args.Has("value")))) {
    return Usage("decode needs --input x.npy, or --query q.npy --key k.npy --value v.npy");
  }
  std::vector<FloatTensor> arrays;
  for (const char* flag : self ? std::vector<const char*>{"input"}
                               : std::vector<const char*>{"query", "key", "value"}) {
    absl::StatusOr<NpyArray> a = ReadNpy(args.Get(flag));
    if (!a.ok()) return Failed(a.status());
    const size_t r = a->shape.size();
    if ((r != 2 && r != 3) || (r == 3 && a->shape[0] != 1) || !IsFloat(a->dtype)) {
      return Failed(absl::InvalidArgumentError(absl::StrCat(
          flag, ": decode takes a float [T, E] or [1, T, E] array, got ", ShapeString(a->shape))));
    }
    if (!arrays.empty() && a->shape[r - 2] != arrays[0].shape[r - 2]) {
      return Failed(absl::InvalidArgumentError(absl::StrCat(
          flag, ": ", a->shape[r - 2], " rows where query has ", arrays[0].shape[r - 2])));
    }
    FloatTensor f;
    f.shape = a->shape;
    f.data.resize(ShapeProduct<size_t>(a->shape));
    ConvertToFloat32(TensorView{a->dtype, a->shape, a->data.data(), a->data.size()}, f.data.data());
    arrays.push_back(std::move(f));
  }
  v1::DecodeRequest base;
  base.set_sequence(args.Get("sequence", "cli"));
  if (absl::Status s = FillOptions(args, base.mutable_options()); !s.ok()) return Local(s);
  base.mutable_options()->set_causal(!args.switches.count("no-causal"));
  absl::StatusOr<CallOptions> options = CallOptionsFrom(args, 0);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  DecodeStream stream(&client, *options);
  const int64_t rows = arrays[0].shape[arrays[0].shape.size() - 2];
  std::vector<float> output, weights;
  std::vector<int64_t> out_shape;
  std::vector<double> step_ms;
  int64_t first_bytes = 0, step_bytes = 0, messages = 0;
  v1::Precision precision = v1::PRECISION_FLOAT32;
  for (int64_t done = 0; done < rows; ++messages) {
    const int64_t n = done == 0 ? std::min(*prefill, rows) : 1;
    v1::DecodeRequest step = base;
    if (self) {
      *step.mutable_input() = RowsOf(arrays[0], done, n, *wire);
    } else {
      *step.mutable_query() = RowsOf(arrays[0], done, n, *wire);
      *step.mutable_key() = RowsOf(arrays[1], done, n, *wire);
      *step.mutable_value() = RowsOf(arrays[2], done, n, *wire);
    }
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<v1::AttentionResponse> r = stream.Append(std::move(step));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!r.ok()) return Failed(r.status());
    (done == 0 ? first_bytes : step_bytes) += stream.last_request_bytes();
    if (done > 0) step_ms.push_back(ms);
    absl::StatusOr<FloatTensor> out = ToFloat(r->output(), "output");
    if (!out.ok()) return Failed(out.status());
    output.insert(output.end(), out->data.begin(), out->data.end());
    out_shape = out->shape;
    precision = r->precision();
    if (r->has_weights()) {
      absl::StatusOr<FloatTensor> w = ToFloat(r->weights(), "weights");
      if (!w.ok()) return Failed(w.status());
      PlaceWeights(*w, done, rows, rows, &weights);
    }
    done += n;
  }
  if (absl::Status s = stream.End(base.sequence()); !s.ok()) return Failed(s);
  if (absl::Status s = stream.Close(); !s.ok()) return Failed(s);
  out_shape[out_shape.size() - 2] = rows;
  std::printf("decoded %lld tokens in %lld messages (prefill %lld)\n", static_cast<long long>(rows),
              static_cast<long long>(messages), static_cast<long long>(std::min(*prefill, rows)));
  std::printf("steps: %s\n", Percentiles(step_ms).c_str());
  std::printf("bytes sent: first message %lld, then %lld per step\n",
              static_cast<long long>(first_bytes),
              static_cast<long long>(messages > 1 ? step_bytes / (messages - 1) : 0));
  v1::AttentionResponse whole;
  whole.set_precision(precision);
  *whole.mutable_output() = MakeTensor(out_shape, output.data(), DType::kFloat32);
  if (!weights.empty()) {
    const int64_t heads = static_cast<int64_t>(weights.size()) / (rows * rows);
    std::vector<int64_t> w_shape = {rows, rows};
    if (heads > 1 || args.Get("weights") == "per-head") w_shape.insert(w_shape.begin(), heads);
    *whole.mutable_weights() = MakeTensor(w_shape, weights.data(), DType::kFloat32);
  }
  if (absl::Status s = WriteResults(args, whole); !s.ok()) return Failed(s);
  return 0;
}

int RunModels(const CliArgs& args, AttentionClient& client) {
  absl::StatusOr<CallOptions> options = CallOptionsFrom(args, 10);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  absl::StatusOr<v1::ListModelsResponse> r = client.ListModels(*options);
  if (!r.ok()) return Failed(r.status());
  std::printf("%-16s %9s %9s %6s %6s %5s\n", "NAME", "EMBED_DIM", "NUM_HEADS", "KDIM", "VDIM",
              "BIAS");
  for (const v1::ModelInfo& m : r->models()) {
    std::printf("%-16s %9lld %9lld %6lld %6lld %5s\n", m.name().c_str(),
                static_cast<long long>(m.embed_dim()), static_cast<long long>(m.num_heads()),
                static_cast<long long>(m.kdim()), static_cast<long long>(m.vdim()),
                m.bias() ? "yes" : "no");
  }
  const v1::ServerLimits& l = r->limits();
  std::printf(
      "limits: max message %lld MiB, max request memory %lld MiB, %d compute threads, "
      "queue %d, %d messages in flight per stream\n",
      static_cast<long long>(l.max_message_bytes() >> 20),
      static_cast<long long>(l.max_request_memory_bytes() >> 20), l.compute_threads(),
      l.max_queue(), l.max_stream_in_flight());
  std::printf("bfloat16 precision: %s\n",
              r->native_bfloat16() ? "native" : "computed in float32 (no bfloat16 instructions)");
  return 0;
}

int RunHealth(const CliArgs& args, AttentionClient& client) {
  absl::StatusOr<CallOptions> options = CallOptionsFrom(args, 5);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  absl::StatusOr<std::string> status = client.Health(args.Get("service"), *options);
  if (!status.ok()) return Failed(status.status());
  std::printf("%s\n", status->c_str());
  return *status == "SERVING" ? 0 : 1;
}

}  // namespace

int RunCli(int argc, char** argv) {
  absl::StatusOr<CliArgs> parsed = ParseArgs(argc, argv, kSwitches);
  if (!parsed.ok()) return Usage(std::string(parsed.status().message()));
  const CliArgs& args = *parsed;
  if (args.command == "load") return RunLoad(args);
  if (args.switches.count("help") || args.command.empty()) {
    FILE* out = args.command.empty() && !args.switches.count("help") ? stderr : stdout;
    std::fputs(kUsage, out);
    std::fputs("\n", out);
    std::fputs(SecurityOptions().Usage().c_str(), out);
    return args.switches.count("help") ? 0 : 2;
  }
  static const std::map<std::string, std::set<std::string>> kKnown = {
      {"attention", {"query", "key", "value"}},
      {"self-attention", {"input"}},
      {"models", {}},
      {"decode", {"input", "query", "key", "value", "prefill", "sequence"}},
      {"health", {"service"}}};
  auto known = kKnown.find(args.command);
  if (known == kKnown.end()) return Usage("unknown command '" + args.command + "'");
  const std::set<std::string> shared = {
      "target",      "timeout",          "heads", "kv-heads",   "scale",
      "attn-mask",   "key-padding-mask", "model", "projection", "weights",
      "weights-out", "wire-dtype",       "out",   "id",         "precision"};
  for (const auto& [name, value] : args.values) {
    const bool is_call =
        args.command == "attention" || args.command == "self-attention" || args.command == "decode";
    if (!known->second.count(name) && name != "target" && name != "timeout" && name != "retries" &&
        !SecurityOptions().Declares(name) && !(is_call && shared.count(name))) {
      return Usage("unknown option --" + name + " for " + args.command);
    }
  }
  absl::StatusOr<ChannelSecurity> security = SecurityFromArgs(args);
  if (!security.ok()) return Usage(std::string(security.status().message()));
  g_security = *security;
  absl::StatusOr<std::string> target = ChannelTarget(args.Get("target", "localhost:50051"));
  if (!target.ok()) return Usage(std::string(target.status().message()));
  absl::StatusOr<CallOptions> options = CallOptionsFrom(args, 0);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  AttentionClient client(
      AttentionClient::Connect(*target, int64_t{256} << 20, true, *security, options->retries));
  if (args.command == "attention") return RunAttention(args, client, false);
  if (args.command == "self-attention") return RunAttention(args, client, true);
  if (args.command == "models") return RunModels(args, client);
  if (args.command == "decode") return RunDecode(args, client);
  return RunHealth(args, client);
}

}  // namespace client
}  // namespace attention
