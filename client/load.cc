// attention-client load: a load tester that measures this service honestly.
// This file reads the flags and runs the levels; the parts are
//   load_workload.h   what is sent (a pool of requests, --verify's references)
//   load_calls.h      channels and calls
//   load_recorder.h   the ledger: every request settled once, latency histograms
//   load_drivers.h    closed loop (unary, streams) and open loop
//   load_streams.h    the closed loop over streams
//   load_decode.h     --rpc decode: sequences decoded over StreamDecode
//   load_report.h     the terminal summary and the JSON, CSV and HTML reports
#include "client/load.h"

#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/args.h"
#include "client/load_calls.h"
#include "client/load_decode.h"
#include "client/load_drivers.h"
#include "client/load_report.h"
#include "client/load_workload.h"
#include "client/security.h"

namespace attention {
namespace client {
namespace {

// Every option of the load tool, declared once: the usage and the known
// names come from here (the security options are SecurityOptions()).
const OptionTable& LoadOptions() {
  static const OptionTable kTable = {{
      {"what to send (random data unless .npy files are given)",
       {{{"rpc"},
         "--rpc attention|self-attention|health|decode|model-infer",
         "(default self-attention; model-infer: the self-attention requests as the Open "
         "Inference Protocol's ModelInfer)"},
        {{"batch", "seq", "kv-seq", "embed", "heads", "kv-heads"},
         "--batch B --seq L [--kv-seq S] --embed E --heads H [--kv-heads G]",
         "shapes (defaults: 1, 128, L, the model's or 512, the model's or 8)"},
        {{"model"},
         "--model NAME",
         "use a model the server has (its embed_dim and heads by default)"},
        {{"model-file"},
         "--model-file PATH",
         "that model's safetensors file, for --verify (default models/NAME.safetensors)"},
        {{"weights"},
         "--weights none|average|per-head",
         "attention weights asked for (default none)"},
        {{}, "--causal", "causal attention"},
        {{"wire-dtype"}, "--wire-dtype float32|float16|bfloat16", "tensors' dtype on the wire"},
        {{"precision"},
         "--precision float32|bfloat16",
         "arithmetic of the products (default float32)"},
        {{"input", "query", "key", "value"},
         "--input x.npy | --query q.npy --key k.npy --value v.npy",
         "send these tensors instead"},
        {{"context", "sequences", "steps"},
         "--rpc decode --model NAME --context N --sequences K --steps M",
         "K sequences on streams of their own, each prefilled with N tokens, then M one-token "
         "steps each sent when the last is answered (defaults 128, 1, 100); a request = a "
         "step; --retries rebuilds a sequence on a live replica"}}},
      {"how to send",
       {{{"concurrency"},
         "--concurrency N[,N...]",
         "closed loop: N callers (a list sweeps, one row per level)"},
        {{"rate"}, "--rate R[,R...]", "open loop: R requests per second (a list sweeps)"},
        {{"arrival"}, "--arrival constant|poisson", "open-loop arrivals (default constant)"},
        {{"duration"}, "--duration SECONDS", "measured time per level (default 10), or"},
        {{"requests"}, "--requests N", "requests per level"},
        {{"warmup"},
         "--warmup SECONDS",
         "load before measuring, excluded from the figures (default 1)"},
        {{"in-flight"},
         "--stream [--in-flight N]",
         "closed loop over bidirectional streams, N messages in flight each (default 4)"},
        {{"connections"},
         "--connections N",
         "channels, each with its own TCP connection to every address (default 1)"},
        {{"max-outstanding"},
         "--max-outstanding N",
         "open loop: at most N requests unanswered (default 1000); a full window delays sends, "
         "which shows as behind schedule"},
        {{"timeout"}, "--timeout SECONDS", "per call, its retries included (default 30)"},
        {{"retries"},
         "--retries N",
         "retry a unary call that failed with UNAVAILABLE (or was reset or cancelled by a "
         "replica or proxy) up to N times (default 0); counted apart (`retries`), a request "
         "that still fails is one error"},
        {{"target"},
         "--target T",
         "HOST:PORT, a comma-separated list of IPv4 HOST:PORT, or dns:///NAME:PORT: calls "
         "balance round robin over every address"}}},
      {"checking and output",
       {{{"verify"},
         "--verify PERCENT",
         "check that share of responses against the naive reference"},
        {{"json", "csv", "html"},
         "--json FILE  --csv FILE  --html FILE",
         "reports (a sweep writes one entry per level)"},
        {{}, "--quiet", "no progress line"}}},
  }};
  return kTable;
}

constexpr char kUsageHead[] =
    "attention-client load: load-tests a server and reports throughput and latency.\n\n"
    "usage: attention-client [--target T] load [options]\n\n";
constexpr char kUsageTail[] =
    "\nExit code: 0, or 1 when a response was lost, out of order or failed --verify; 2 for bad "
    "usage.\n";

int Usage(const std::string& problem) {
  std::fprintf(stderr, "attention-client load: %s\n(attention-client load --help for usage)\n",
               problem.c_str());
  return 2;
}

// The flags of a load test, checked.
struct LoadFlags {
  RunSettings run;
  RpcKind rpc = RpcKind::kSelfAttention;
  std::vector<double> levels;
  double warmup = 1;
  int64_t connections = 1;
  int retries = 0;
  double verify = 0;
  std::string target;
  ChannelSecurity security;
};

// The flags of `args` but those of the workload (MakeWorkload reads them).
// Errors: InvalidArgument with the message to print as usage.
absl::StatusOr<LoadFlags> ParseFlags(const CliArgs& args) {
  std::set<std::string> known = LoadOptions().Names();
  const std::set<std::string> security_names = SecurityOptions().Names();
  known.insert(security_names.begin(), security_names.end());
  if (absl::Status st = args.CheckKnown(known); !st.ok()) return st;
  if (args.Has("concurrency") && args.Has("rate")) {
    return absl::InvalidArgumentError(
        "give --concurrency (closed loop) or --rate (open loop), not both");
  }
  LoadFlags f;
  RunSettings& s = f.run;
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
  absl::StatusOr<int64_t> retries = args.GetInt("retries", 0);
  for (const absl::Status& st :
       {levels.status(), duration.status(), requests.status(), warmup.status(), in_flight.status(),
        connections.status(), max_outstanding.status(), timeout.status(), verify.status(),
        retries.status()}) {
    if (!st.ok()) return st;
  }
  for (double l : *levels) {
    if (!(l > 0) || (!s.open_loop && l != std::floor(l))) {
      return absl::InvalidArgumentError(
          "--concurrency takes positive integers, --rate positive numbers");
    }
  }
  s.arrival = args.Get("arrival", "constant");
  if (s.arrival != "constant" && s.arrival != "poisson") {
    return absl::InvalidArgumentError("--arrival: expected constant or poisson");
  }
  absl::StatusOr<RpcKind> rpc = ParseRpcKind(args.Get("rpc", "self-attention"));
  if (!rpc.ok()) return rpc.status();
  s.duration = *duration;
  s.requests = *requests;
  s.stream = args.Switch("stream");
  s.in_flight = static_cast<int>(*in_flight);
  s.max_outstanding = *max_outstanding;
  s.timeout = *timeout;
  s.progress = !args.Switch("quiet");
  if (s.stream && s.open_loop) {
    return absl::InvalidArgumentError("--stream runs a closed loop: use --concurrency");
  }
  if (*rpc == RpcKind::kDecode && (args.Has("concurrency") || args.Has("rate") || s.stream ||
                                   args.Has("requests") || args.Has("duration"))) {
    return absl::InvalidArgumentError(
        "--rpc decode runs --sequences closed loops of --steps steps: no --concurrency, --rate, "
        "--stream, --requests or --duration");
  }
  if (*rpc != RpcKind::kDecode &&
      (args.Has("context") || args.Has("sequences") || args.Has("steps"))) {
    return absl::InvalidArgumentError("--context, --sequences and --steps are for --rpc decode");
  }
  if (s.stream && *rpc == RpcKind::kModelInfer) {
    return absl::InvalidArgumentError("--stream: not with --rpc model-infer (unary calls only)");
  }
  if (s.stream && *rpc == RpcKind::kHealth) {
    return absl::InvalidArgumentError("--stream does not apply to --rpc health");
  }
  if (*in_flight < 1 || *connections < 1 || *max_outstanding < 1 || *timeout <= 0 ||
      *duration <= 0 || *requests < 0 || *warmup < 0 || *verify < 0 || *verify > 100 ||
      *retries < 0 || *retries > 100) {
    return absl::InvalidArgumentError(
        "--in-flight, --connections, --max-outstanding, --timeout, --duration must be "
        "positive; --verify between 0 and 100; --retries between 0 and 100");
  }
  f.rpc = *rpc;
  f.levels = *std::move(levels);
  f.warmup = *warmup;
  f.connections = *connections;
  f.retries = static_cast<int>(*retries);
  f.verify = *verify;
  f.target = args.Get("target", "localhost:50051");
  absl::StatusOr<ChannelSecurity> security = SecurityFromArgs(args);
  if (!security.ok()) return security.status();
  f.security = *std::move(security);
  return f;
}

// The report's line of settings.
std::string SettingsLine(const LoadFlags& f) {
  const RunSettings& s = f.run;
  if (f.rpc == RpcKind::kDecode) {
    return absl::StrCat("a closed loop per sequence, each on a stream of its own, prefills not ",
                        "measured, ", f.connections, " connection(s) per address, timeout ",
                        s.timeout, " s per stream, retries ", f.retries, ", verify ", f.verify,
                        "%");
  }
  return absl::StrCat(
      s.open_loop
          ? absl::StrCat("open loop, ", s.arrival, " arrivals, max outstanding ", s.max_outstanding)
          : (s.stream ? absl::StrCat("closed loop over streams, ", s.in_flight, " in flight each")
                      : std::string("closed loop, unary")),
      ", ", s.requests > 0 ? absl::StrCat(s.requests, " requests") : absl::StrCat(s.duration, " s"),
      " per level, warmup ", f.warmup, " s, ", f.connections,
      " connection(s) per address, timeout ", s.timeout, " s, retries ", f.retries, ", verify ",
      f.verify, "%");
}

// Runs every level (each after its warmup), printing its figures.
void RunLevels(const Workload& w, Channels& ch, const LoadFlags& f, LoadReport* report) {
  RunSettings s = f.run;
  if (w.rpc == RpcKind::kDecode) {  // one level: its prefills are its warmup
    LoadResult r = RunDecodeLevel(w, ch, s, f.verify);
    r.level = static_cast<double>(w.sequences);
    r.request_bytes = w.request_bytes;
    r.flops_per_request = w.flops;
    PrintResult(r, stdout);
    report->results.push_back(std::move(r));
    return;
  }
  for (double level : f.levels) {
    s.level = level;
    const std::string label =
        s.open_loop ? absl::StrCat("rate ", level, "/s") : absl::StrCat("concurrency ", level);
    if (f.warmup > 0) {
      RunSettings warm = s;
      warm.duration = f.warmup;
      warm.requests = 0;
      warm.progress = false;
      RunLevel(w, ch, warm, 0, label);
    }
    LoadResult r = RunLevel(w, ch, s, f.verify, label);
    r.open_loop = s.open_loop;
    r.level = level;
    r.request_bytes = w.request_bytes;
    r.flops_per_request = w.flops;
    PrintResult(r, stdout);
    report->results.push_back(std::move(r));
  }
}

// Writes the reports --json, --csv and --html ask for; false (after saying
// why) when one cannot be written.
bool WriteReports(const CliArgs& args, const LoadReport& report) {
  for (const auto& [flag, writer] :
       {std::pair<std::string, absl::Status (*)(const LoadReport&, const std::string&)>{"json",
                                                                                        WriteJson},
        {"csv", WriteCsv},
        {"html", WriteHtml}}) {
    if (!args.Has(flag)) continue;
    if (absl::Status st = writer(report, args.Get(flag)); !st.ok()) {
      std::fprintf(stderr, "attention-client load: %s\n", std::string(st.message()).c_str());
      return false;
    }
    std::printf("load: wrote %s\n", args.Get(flag).c_str());
  }
  return true;
}

}  // namespace

int RunLoad(const CliArgs& args) {
  if (args.Switch("help")) {
    std::fputs(kUsageHead, stdout);
    std::fputs(LoadOptions().Usage().c_str(), stdout);
    std::fputs("\n", stdout);
    std::fputs(SecurityOptions().Usage().c_str(), stdout);
    std::fputs(kUsageTail, stdout);
    return 0;
  }
  absl::StatusOr<LoadFlags> flags = ParseFlags(args);
  if (!flags.ok()) return Usage(std::string(flags.status().message()));
  // Debian's Abseil is built with deadlock detection on: every lock of gRPC's
  // own mutexes updates a lock graph, a few percent of the tool's CPU per
  // small call, which the server it measures would not get back.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const LoadFlags& f = *flags;
  Channels ch;
  if (absl::Status st = OpenChannels(f.target, static_cast<int>(f.connections), f.security, &ch);
      !st.ok()) {
    return Usage(std::string(st.message()));
  }
  ch.retries = f.retries;
  AttentionClient probe(ch.channels[0]);
  absl::StatusOr<Workload> w = f.rpc == RpcKind::kDecode
                                   ? MakeDecodeWorkload(args, probe, f.verify)
                                   : MakeWorkload(args, f.rpc, probe, f.verify);
  if (!w.ok()) {
    std::fprintf(stderr, "attention-client load: %s: %s\n",
                 absl::StatusCodeToString(w.status().code()).c_str(),
                 std::string(w.status().message()).c_str());
    return w.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }

  LoadReport report;
  report.target = f.target;
  report.workload = w->description;
  report.request_bytes = w->request_bytes;
  report.flops_per_request = w->flops;
  report.settings = SettingsLine(f);
  std::printf("load: %s -> %s\nload: %s\n", w->description.c_str(), f.target.c_str(),
              report.settings.c_str());
  std::fflush(stdout);
  RunLevels(*w, ch, f, &report);
  if (report.results.size() > 1) PrintSweepTable(report, stdout);
  if (!WriteReports(args, report)) return 1;
  for (const LoadResult& r : report.results) {
    if (r.lost > 0 || r.unexpected > 0 || r.mismatches > 0) return 1;
  }
  return 0;
}

}  // namespace client
}  // namespace attention
