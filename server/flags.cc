#include "server/flags.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attention {
namespace server {
namespace {

// Where a flag's value lives in ServerOptions.
template <typename T>
using Field = T* (*)(ServerOptions*);
using AnyField = std::variant<Field<int>, Field<int64_t>, Field<double>, Field<bool>,
                              Field<std::string>, Field<std::vector<std::string>>>;

constexpr int64_t kMaxMiB = int64_t{1} << 24;  // 16 TiB: no overflow once in bytes
constexpr int kMaxSeconds = 1000000;           // ~11 days: no overflow once in ms

struct Flag {
  const char* name;   // without the dashes
  const char* group;  // the --help section
  const char* value;  // how --help names the value ("N", "PATH"); empty for booleans
  AnyField field;
  double min;  // the range of numeric flags
  double max;
  const char* help;
};

// The groups, in --help order.
constexpr const char* kGroups[] = {"listening",   "compute",       "limits",
                                   "connections", "observability", "security"};

// Listening, compute and limits.
std::vector<Flag> ServingFlags() {
  return {
      {"listen", "listening", "HOST:PORT", [](ServerOptions* o) { return &o->listen; }, 0, 0,
       "where to listen (port 0 picks a free one); unix:PATH for a unix socket (a client on the "
       "same host)"},
      {"model", "listening", "NAME=PATH", [](ServerOptions* o) { return &o->model_specs; }, 0, 0,
       "a safetensors model (nn.MultiheadAttention weights, written by scripts/export_model.py); "
       "repeat the flag, or separate with commas, to load several"},
      {"model-dir", "listening", "DIR", [](ServerOptions* o) { return &o->model_dir; }, 0, 0,
       "every NAME.safetensors in DIR is model NAME, loaded at start and again when its file "
       "changes (replaced by a rename, say): checked every --model-poll-seconds and on SIGHUP; "
       "a file removed unloads its model. A new version replaces the old atomically (calls in "
       "flight and decode sequences keep theirs); one that fails to load leaves the old "
       "serving. Empty: none"},
      {"model-poll-seconds", "listening", "N",
       [](ServerOptions* o) { return &o->model_poll_seconds; }, 0, 86400,
       "how often --model-dir is checked for changes (0: only at start and on SIGHUP)"},
      {"threads", "compute", "N", [](ServerOptions* o) { return &o->threads; }, 0, 4096,
       "compute threads in all (0 = every core)"},
      {"workers", "compute", "N", [](ServerOptions* o) { return &o->workers; }, 1, 4096,
       "requests computed at once, each with threads/workers OpenMP threads (1: one request at "
       "a time on every core)"},
      {"pin-threads", "compute", "", [](ServerOptions* o) { return &o->pin_threads; }, 0, 0,
       "pin each compute thread to a CPU of its own when the process may run on exactly "
       "--threads CPUs (a container's cpuset, a machine of that size; never on a larger, shared "
       "set). Unpinned, small calls after an idle moment can take milliseconds longer"},
      {"batch-delay-us", "compute", "N", [](ServerOptions* o) { return &o->batch_delay_us; }, 0,
       10000000,
       "dynamic batching of small requests (0 = off): requests for the same model (or none) "
       "with the same shapes past the batch dimension and options are merged into one "
       "computation. A request that finds compute idle starts at once; under concurrent "
       "traffic it may wait up to N microseconds for others (e.g. 500)"},
      {"batch-max-size", "compute", "N", [](ServerOptions* o) { return &o->batch_max_size; }, 1,
       4096, "requests merged into one computation at most"},
      {"max-queue", "limits", "N", [](ServerOptions* o) { return &o->max_queue; }, 0, 1000000,
       "requests waiting for compute; beyond that calls get RESOURCE_EXHAUSTED at once. Once "
       "3/4 of it wait, a connection holding a quarter of it is refused (fairness)"},
      {"max-message-mb", "limits", "N", [](ServerOptions* o) { return &o->max_message_mb; }, 1,
       kMaxMiB, "largest request and response message, MiB"},
      {"max-request-memory-mb", "limits", "N",
       [](ServerOptions* o) { return &o->max_request_memory_mb; }, 1, kMaxMiB,
       "estimated memory one request may use (inputs, scores, outputs), MiB; larger requests "
       "get RESOURCE_EXHAUSTED"},
      {"max-request-gflop", "limits", "N", [](ServerOptions* o) { return &o->max_request_gflop; },
       0, 1e9,
       "estimated work one request may take, GFLOP: its products' floating-point operations "
       "plus 128 for each attention score (a score's masks, exponential and sums cost about "
       "that much); larger requests get RESOURCE_EXHAUSTED before they are queued, so that one "
       "request cannot hold compute for minutes. 1000 is about 5 s on two cores (0: no limit)"},
      {"max-stream-in-flight", "limits", "N",
       [](ServerOptions* o) { return &o->max_stream_in_flight; }, 1, 4096,
       "messages of one stream read but not yet answered (flow control)"},
      {"max-sequence-tokens", "limits", "N",
       [](ServerOptions* o) { return &o->max_sequence_tokens; }, 1, int64_t{1} << 30,
       "StreamDecode: keys (tokens) one sequence may hold; a message that would take it over is "
       "refused (RESOURCE_EXHAUSTED) and changes nothing"},
      {"max-sequences-per-stream", "limits", "N",
       [](ServerOptions* o) { return &o->max_sequences_per_stream; }, 1, 1 << 20,
       "StreamDecode: sequences one stream may hold at once (end one to start another)"},
      {"sequence-idle-seconds", "limits", "N",
       [](ServerOptions* o) { return &o->sequence_idle_seconds; }, 1, kMaxSeconds,
       "StreamDecode: a sequence untouched this long is freed (its keys and values go back to "
       "--max-memory-mb); its next message gets FAILED_PRECONDITION saying so"},
      {"receive-timeout-seconds", "limits", "N",
       [](ServerOptions* o) { return &o->receive_timeout_seconds; }, 0, kMaxSeconds,
       "a unary request must arrive within N s of the server starting to read it while other "
       "uploads wait for the server (it reads a few at a time, --max-memory-mb); a slower one is "
       "cancelled, so that a client cannot hold the server's uploads by never finishing its own "
       "(0: never)"},
  };
}

// Memory, connections, observability and security.
std::vector<Flag> OperatingFlags() {
  return {
      {"max-memory-mb", "limits", "N", [](ServerOptions* o) { return &o->max_memory_mb; }, 0,
       kMaxMiB,
       "memory for everything the server holds for requests, MiB: a quarter for requests still "
       "being received (gRPC's resource quota: over it, uploads are cancelled), the rest for "
       "requests being served (messages, compute buffers, responses not yet written; a request "
       "that does not fit gets RESOURCE_EXHAUSTED at once). Requests larger than the quarter "
       "cannot be received. 0: 60% of the container's memory limit (cgroup), or of physical "
       "memory"},
      {"max-concurrent-streams", "connections", "N",
       [](ServerOptions* o) { return &o->max_concurrent_streams; }, 1, 1000000,
       "calls open at once on one connection"},
      {"max-connection-idle-seconds", "connections", "N",
       [](ServerOptions* o) { return &o->max_connection_idle_seconds; }, 0, kMaxSeconds,
       "close a connection without calls for N s (0: never)"},
      {"max-connection-age-seconds", "connections", "N",
       [](ServerOptions* o) { return &o->max_connection_age_seconds; }, 0, kMaxSeconds,
       "close connections N s old, so that long-lived clients reconnect and spread over "
       "replicas (0: never; e.g. 1800 behind a load balancer)"},
      {"max-connection-age-grace-seconds", "connections", "N",
       [](ServerOptions* o) { return &o->max_connection_age_grace_seconds; }, 0, kMaxSeconds,
       "how long calls on an aged connection may still take"},
      {"min-client-ping-seconds", "connections", "N",
       [](ServerOptions* o) { return &o->min_client_ping_seconds; }, 0, kMaxSeconds,
       "a client that pings more often than every N s while it has no calls is disconnected "
       "after 2 strikes; the server pings idle connections every 60 s to find dead peers"},
      {"drain-seconds", "connections", "X", [](ServerOptions* o) { return &o->drain_seconds; }, 0,
       kMaxSeconds,
       "on SIGTERM/SIGINT: health turns NOT_SERVING, new calls are refused, running calls get "
       "X seconds before they are cancelled; then the server exits 0"},
      {"admin-listen", "observability", "HOST:PORT",
       [](ServerOptions* o) { return &o->admin_listen; }, 0, 0,
       "plain HTTP endpoint for probes and scrapers (empty: none): GET /metrics (Prometheus "
       "text format), /healthz (200 while alive), /readyz (200 serving, 503 starting or "
       "draining). Port 0 picks a free one (printed at start). Keep it off public networks"},
      {"access-log", "observability", "PATH|-", [](ServerOptions* o) { return &o->access_log; }, 0,
       0,
       "one JSON object a line per call and per stream message (time, peer, rpc, model, "
       "shapes, code, bytes, queue and compute ms), appended to PATH or written to stdout (-); "
       "never tensor data. Lines the writer cannot keep up with are dropped and counted "
       "(attention_access_log_dropped_total). Empty: none"},
      {"tls-cert", "security", "PATH", [](ServerOptions* o) { return &o->security.tls_cert; }, 0, 0,
       "serve TLS with this PEM certificate chain (and --tls-key); empty: plaintext. Start-up "
       "fails on unreadable or mismatched files. A changed file is served once it validates (a "
       "broken rotation is refused and the last good certificate kept)"},
      {"tls-key", "security", "PATH", [](ServerOptions* o) { return &o->security.tls_key; }, 0, 0,
       "the PEM private key of --tls-cert"},
      {"tls-client-ca", "security", "PATH",
       [](ServerOptions* o) { return &o->security.tls_client_ca; }, 0, 0,
       "also require a client certificate signed by a CA in this PEM bundle (mutual TLS)"},
      {"auth-token-file", "security", "PATH",
       [](ServerOptions* o) { return &o->security.auth_token_file; }, 0, 0,
       "require 'authorization: Bearer TOKEN' on every call but health checks "
       "(UNAUTHENTICATED otherwise); one token a line, blank lines and # comments ignored; "
       "re-read when it changes. Needs TLS: a token sent in plaintext can be read by anyone on "
       "the path"},
      {"reflection", "security", "", [](ServerOptions* o) { return &o->reflection; }, 0, 0,
       "serve gRPC server reflection (behind tokens when they are required)"},
  };
}

const std::vector<Flag>& Flags() {
  static const std::vector<Flag> kFlags = [] {
    std::vector<Flag> all = ServingFlags();
    for (Flag& f : OperatingFlags()) all.push_back(f);
    return all;
  }();
  return kFlags;
}

const Flag* Find(const std::string& name) {
  for (const Flag& f : Flags()) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

absl::Status NotA(const Flag& flag, const char* what, absl::string_view value) {
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag.name, ": not ", what, ": '", value, "'"));
}

// Stores `value` into the field of `flag` in `options`.
absl::Status Set(const Flag& flag, absl::string_view value, ServerOptions* options) {
  struct Setter {
    const Flag& flag;
    absl::string_view value;
    ServerOptions* options;
    absl::Status operator()(Field<int> f) const {
      return absl::SimpleAtoi(value, f(options)) ? absl::OkStatus()
                                                 : NotA(flag, "an integer", value);
    }
    absl::Status operator()(Field<int64_t> f) const {
      return absl::SimpleAtoi(value, f(options)) ? absl::OkStatus()
                                                 : NotA(flag, "an integer", value);
    }
    absl::Status operator()(Field<double> f) const {
      return absl::SimpleAtod(value, f(options)) && std::isfinite(*f(options))
                 ? absl::OkStatus()
                 : NotA(flag, "a number", value);
    }
    absl::Status operator()(Field<bool> f) const {
      return absl::SimpleAtob(value, f(options)) ? absl::OkStatus()
                                                 : NotA(flag, "true or false", value);
    }
    absl::Status operator()(Field<std::string> f) const {
      *f(options) = std::string(value);
      return absl::OkStatus();
    }
    absl::Status operator()(Field<std::vector<std::string>> f) const {
      for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        f(options)->emplace_back(part);
      }
      return absl::OkStatus();
    }
  };
  return std::visit(Setter{flag, value, options}, flag.field);
}

// `value` as a user writes it: integers without an exponent.
std::string Number(double value) {
  if (value == std::floor(value) && std::fabs(value) < 1e18) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  return absl::StrCat(value);
}

// The value of a numeric flag in `options`; nullopt-like NaN for the others.
double NumericValue(const Flag& flag, const ServerOptions& options) {
  auto* o = const_cast<ServerOptions*>(&options);  // the fields are only read
  if (auto* f = std::get_if<Field<int>>(&flag.field)) return *(*f)(o);
  if (auto* f = std::get_if<Field<int64_t>>(&flag.field)) return static_cast<double>(*(*f)(o));
  if (auto* f = std::get_if<Field<double>>(&flag.field)) return *(*f)(o);
  return std::nan("");
}

// The default of `flag`, as --help shows it.
std::string DefaultText(const Flag& flag) {
  ServerOptions defaults;
  if (auto* f = std::get_if<Field<bool>>(&flag.field)) return *(*f)(&defaults) ? "true" : "false";
  if (auto* f = std::get_if<Field<std::string>>(&flag.field)) {
    return (*f)(&defaults)->empty() ? "none" : *(*f)(&defaults);
  }
  if (std::holds_alternative<Field<std::vector<std::string>>>(flag.field)) return "none";
  return Number(NumericValue(flag, defaults));
}

// Appends `text` wrapped to the help's width, every line indented.
void AppendWrapped(const std::string& text, size_t indent, std::string* out) {
  constexpr size_t kWidth = 100;
  size_t column = indent;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (column > indent && column + 1 + word.size() > kWidth) {
      absl::StrAppend(out, "\n", std::string(indent, ' '));
      column = indent;
    } else if (column > indent) {
      out->push_back(' ');
      ++column;
    }
    absl::StrAppend(out, word);
    column += word.size();
  }
  out->push_back('\n');
}

}  // namespace

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") return true;
  }
  return false;
}

absl::Status ValidateServerOptions(const ServerOptions& options) {
  for (const Flag& flag : Flags()) {
    const double value = NumericValue(flag, options);
    if (std::isnan(value)) continue;
    if (value < flag.min) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag.name, ": must be at least ",
                                                     Number(flag.min), ", got ", Number(value)));
    }
    if (value > flag.max) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag.name, ": must be at most ",
                                                     Number(flag.max), ", got ", Number(value)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerOptions> ParseServerFlags(int argc, char** argv) {
  ServerOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-') {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    // --name, or -name; underscores read as dashes (--max_queue).
    const size_t dashes = arg[1] == '-' ? 2 : 1;
    const size_t equals = arg.find('=');
    std::string name = arg.substr(dashes, equals == std::string::npos ? equals : equals - dashes);
    std::replace(name.begin(), name.end(), '_', '-');
    const Flag* flag = Find(name);
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    std::string value;
    if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else if (std::holds_alternative<Field<bool>>(flag->field)) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
    if (absl::Status s = Set(*flag, value, &options); !s.ok()) return s;
  }
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  return options;
}

std::string ServerHelp() {
  std::string help =
      "attention-server: serves multi-head attention (attention.v1.AttentionService),\n"
      "grpc.health.v1.Health and server reflection over gRPC.\n\n"
      "usage: attention-server [flags]\n"
      "  e.g. attention-server --listen 127.0.0.1:50051 --model demo=models/demo.safetensors\n";
  constexpr size_t kIndent = 32;
  for (const char* group : kGroups) {
    absl::StrAppend(&help, "\n", group, ":\n");
    for (const Flag& flag : Flags()) {
      if (std::string(group) != flag.group) continue;
      std::string head = absl::StrCat("  --", flag.name);
      if (*flag.value != '\0') absl::StrAppend(&head, " ", flag.value);
      if (std::holds_alternative<Field<bool>>(flag.field)) absl::StrAppend(&head, "[=true|false]");
      head += head.size() + 1 < kIndent ? std::string(kIndent - head.size(), ' ')
                                        : "\n" + std::string(kIndent, ' ');
      help += head;
      AppendWrapped(absl::StrCat(flag.help, " (default ", DefaultText(flag), ")"), kIndent, &help);
    }
  }
  help += "\nother:\n  --help                        this text\n";
  return help;
}

}  // namespace server
}  // namespace attention
