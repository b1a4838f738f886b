#include "server/server.h"

#include <grpc/support/log.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>
#include <omp.h>
#include <signal.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/executor.h"
#include "core/workspace.h"
#include "google/protobuf/stubs/logging.h"
#include "server/access_log.h"
#include "server/admin_http.h"
#include "server/allocator.h"
#include "server/flags.h"
#include "server/health_service.h"
#include "server/infer_service.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/model_directory.h"
#include "server/model_registry.h"
#include "server/service.h"
#include "server/service_metrics.h"
#include "server/stream_flow.h"
#include "server/stream_read_guard.h"

namespace attention {
namespace server {
namespace {

constexpr char kServiceName[] = "attention.v1.AttentionService";
// The version ServerMetadata reports (the project's, from CMake).
constexpr char kServerVersion[] = ATTENTION_VERSION;
// Access log lines that may wait for the writer (about 300 bytes each).
constexpr size_t kAccessLogBuffer = 8192;

// What /readyz reports.
enum class Phase { kStarting, kServing, kDraining };

// Lines a client can cause (a failed TLS handshake, a request id that is not
// UTF-8) are written at most kLinesPerSecond a second from each source; the
// rest are counted and the count is said with the next line written.
class LogLimiter {
 public:
  static constexpr int kLinesPerSecond = 5;

  void Write(const char* source, const char* message) {
    const int64_t second = absl::ToUnixSeconds(absl::Now());
    int64_t suppressed = 0;
    {
      absl::MutexLock lock(&mu_);
      if (second != second_) {
        second_ = second;
        written_ = 0;
      }
      if (written_ >= kLinesPerSecond) {
        ++suppressed_;
        return;
      }
      ++written_;
      std::swap(suppressed, suppressed_);
    }
    if (suppressed > 0) {
      std::fprintf(stderr, "attention-server: %s: %lld similar lines suppressed\n", source,
                   static_cast<long long>(suppressed));
    }
    std::fprintf(stderr, "attention-server: %s: %s\n", source, message);
  }

 private:
  absl::Mutex mu_;
  int64_t second_ ABSL_GUARDED_BY(mu_) = 0;
  int written_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

LogLimiter& GrpcLogLimiter() {
  static LogLimiter* const limiter = new LogLimiter();
  return *limiter;
}
LogLimiter& ProtobufLogLimiter() {
  static LogLimiter* const limiter = new LogLimiter();
  return *limiter;
}

// gRPC's own log lines: none while starting (we print one clear line instead),
// errors only afterwards, rate-limited.
std::atomic<bool> grpc_started{false};
void GrpcLog(gpr_log_func_args* args) {
  if (grpc_started && args->severity == GPR_LOG_SEVERITY_ERROR) {
    GrpcLogLimiter().Write("grpc", args->message);
  }
}

// Protobuf's: a request with a string that is not UTF-8 logs one each
// (the request itself is refused with INVALID_ARGUMENT).
void ProtobufLog(google::protobuf::LogLevel level, const char* /*filename*/, int /*line*/,
                 const std::string& message) {
  if (level >= google::protobuf::LOGLEVEL_ERROR) {
    ProtobufLogLimiter().Write("protobuf", message.c_str());
  }
}

// Linking gRPC's reflection library registers its plugin for every server;
// --reflection=false takes it out of this server's builder.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
                                    return plugin->name() == "proto_server_reflection";
                                  }),
                   plugins->end());
  }
};

// Channel arguments of the connection limits (see --help): streams per
// connection, idle and age limits, and keepalive enforcement (a client that
// pings more often than min_client_ping_seconds without calls gets two strikes
// then GOAWAY; the server itself pings idle connections each minute to find
// dead peers).
void SetConnectionLimits(const ServerOptions& options, grpc::ServerBuilder* builder) {
  constexpr int kMs = 1000;
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  if (options.max_connection_idle_seconds > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                                options.max_connection_idle_seconds * kMs);
  }
  if (options.max_connection_age_seconds > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                                options.max_connection_age_seconds * kMs);
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                options.max_connection_age_grace_seconds * kMs);
  }
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              options.min_client_ping_seconds * kMs);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // HTTP/2 flow control without BDP probing: a stream whose request is not
  // being read (an upload waiting for the receive gate, a stream message
  // beyond --max-stream-in-flight) holds at most 64 KiB of the client's
  // bytes. With probing, gRPC 1.51 grows every new stream's window to about
  // 4 MiB, which 48 parked uploads filled past the memory budget. A stream
  // being read still gets 1 MiB of window at a time until its message is in.
  builder->AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * kMs);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * kMs);
}

// The part of the transport's share for unary uploads (receive slots).
int64_t UploadsShare(const MemoryShares& memory) { return memory.transport_bytes / 4 * 3; }

// The service's limits from the options and the memory shares.
ServiceLimits LimitsOf(const ServerOptions& options, const MemoryShares& memory,
                       MemoryBudget* budget) {
  ServiceLimits limits;
  limits.max_message_bytes = options.max_message_mb << 20;
  // A request larger than the transport's share of the memory can never be
  // received whole, so the receive limit is at most that share (the start
  // line and ListModels say it). gRPC checks the size only once a message has
  // arrived, so such a request is usually cut by the quota before.
  // Three quarters of the share are the unary uploads'; the rest is kept for
  // stream messages in transit, which cannot wait for a slot (the read guard
  // bounds them: server/stream_read_guard.h).
  const int64_t uploads_bytes = UploadsShare(memory);
  limits.max_receive_bytes = std::min(limits.max_message_bytes, uploads_bytes);
  // Each upload may be the largest: at most as many as fit in their share.
  limits.receive_slots =
      static_cast<int>(std::max<int64_t>(1, uploads_bytes / limits.max_receive_bytes));
  limits.max_request_memory_bytes = options.max_request_memory_mb << 20;
  limits.max_request_work = static_cast<double>(options.max_request_gflop) * 1e9;
  limits.max_stream_in_flight = options.max_stream_in_flight;
  limits.max_sequence_tokens = options.max_sequence_tokens;
  limits.max_sequences_per_stream = options.max_sequences_per_stream;
  limits.sequence_idle_seconds = options.sequence_idle_seconds;
  limits.receive_timeout_seconds = options.receive_timeout_seconds;
  limits.max_queue = options.max_queue;
  limits.batch_delay_us = options.batch_delay_us;
  limits.batch_max_size = options.batch_max_size;
  limits.memory_budget = budget;
  return limits;
}

}  // namespace

// What Start builds; members are destroyed in reverse order, so everything
// that writes to the access log or reads the registry goes first.
struct Server::State {
  explicit State(int64_t budget_bytes)
      : memory(SplitMemoryBudget(budget_bytes)),
        budget(memory.served_bytes),
        trimmer(&budget, absl::Seconds(1)),
        quota("attention-server") {}

  MemoryShares memory;
  MemoryBudget budget;
  IdleTrimmer trimmer;
  Registry registry;
  std::atomic<Phase> phase{Phase::kStarting};
  std::unique_ptr<AccessLog> access_log;
  std::unique_ptr<AdminServer> admin;
  std::unique_ptr<ModelRegistry> models;
  std::unique_ptr<Executor> executor;
  ServiceLimits limits;
  std::unique_ptr<ServiceMetrics> metrics;
  // --model-dir: polls until destroyed; goes before the metrics and the
  // registry it tells, after the gRPC server and the service that call it.
  std::unique_ptr<ModelDirectory> model_dir;
  // Outlives the service and gRPC, whose streams it watches.
  std::unique_ptr<StreamReadGuard> read_guard;
  std::unique_ptr<AttentionServiceImpl> service;
  grpc::ResourceQuota quota;
  std::unique_ptr<HealthService> health;        // outlives grpc_server, which serves it
  std::unique_ptr<InferenceServiceImpl> infer;  // likewise
  // gRPC serves TLS from the watcher's copies: outlives grpc_server.
  std::shared_ptr<CertificateWatcher> certificates;
  std::unique_ptr<grpc::Server> grpc_server;
  std::string security;       // DescribeSecurity, for the summary
  std::string budget_origin;  // where the memory budget came from, for the summary

  // The admin endpoint first, so that probes see the server starting (alive,
  // not ready) while the models load.
  absl::Status StartAdmin(const std::string& address) {
    AdminServer::Handlers handlers;
    handlers.metrics = [this] { return registry.Exposition(); };
    handlers.not_ready = [this]() -> std::string {
      switch (phase.load()) {
        case Phase::kStarting:
          return "starting";
        case Phase::kDraining:
          return "draining";
        case Phase::kServing:
          break;
      }
      return "";
    };
    absl::StatusOr<std::unique_ptr<AdminServer>> started =
        AdminServer::Start(address, std::move(handlers));
    if (!started.ok()) return started.status();
    admin = std::move(*started);
    std::printf("attention-server: admin endpoint on http://%s:%d (/metrics /healthz /readyz)\n",
                address.substr(0, address.rfind(':')).c_str(), admin->port());
    std::fflush(stdout);
    return absl::OkStatus();
  }

  // The bound on stream messages in transit (server/stream_read_guard.h):
  // what the heap holds beyond what it held now (the models loaded), the
  // budget's reservations, the compute threads' kept workspaces and the open
  // streams' own state may reach the transport's share. None where the
  // allocator cannot say what it holds (the sanitizer build).
  std::unique_ptr<StreamReadGuard> MakeReadGuard() {
    StreamReadGuard::Options o;
    const int64_t baseline = AllocatedBytes();
    if (baseline >= 0) {
      o.allowance_bytes = memory.transport_bytes;
      o.max_message_bytes = limits.max_receive_bytes;
      o.untracked = [this, baseline] {
        return AllocatedBytes() - baseline - budget.used() -
               internal::Workspace::KeptBytesAllThreads() -
               int64_t{read_guard->pending()} * kStreamStateBytes;
      };
    }
    return std::make_unique<StreamReadGuard>(std::move(o));
  }

  // The executor, the metrics and the service over the loaded models.
  void BuildService(const ServerOptions& options, int test_compute_delay_ms) {
    const int threads = options.threads > 0 ? options.threads : omp_get_num_procs();
    executor = std::make_unique<Executor>(
        Executor::Options{options.workers, std::max(1, threads / options.workers),
                          static_cast<size_t>(options.max_queue), options.pin_threads});
    limits = LimitsOf(options, memory, &budget);
    read_guard = MakeReadGuard();
    limits.read_guard = read_guard.get();
    registry.AddCallback(
        "attention_stream_reads_deferred",
        "Stream reads the read guard holds back while the transport's share of "
        "--max-memory-mb is used up (their clients' messages wait in the clients).",
        "gauge", [this] { return static_cast<double>(read_guard->deferred()); });
    registry.AddCallback("attention_memory_budget_limit_bytes",
                         "The share of --max-memory-mb for requests being served.", "gauge",
                         [this] { return static_cast<double>(budget.limit()); });
    registry.AddCallback("attention_memory_budget_used_bytes",
                         "Bytes of the memory budget reserved by requests being served.", "gauge",
                         [this] { return static_cast<double>(budget.used()); });
    registry.AddCallback("attention_tls_certificate_reload_failures_total",
                         "Changed TLS files refused (the last good certificate kept serving).",
                         "counter",
                         [] { return static_cast<double>(CertificateReloadFailures()); });
    ServiceMetrics::Options metrics_options;
    for (const ModelRegistry::Entry& e : models->All()) metrics_options.models.push_back(e.name);
    metrics_options.max_request_memory_bytes = limits.max_request_memory_bytes;
    metrics_options.max_message_bytes = limits.max_message_bytes;
    metrics_options.max_queue = limits.max_queue;
    metrics = std::make_unique<ServiceMetrics>(&registry, metrics_options, access_log.get());
    service =
        std::make_unique<AttentionServiceImpl>(models.get(), executor.get(), limits, metrics.get());
    infer = std::make_unique<InferenceServiceImpl>(service.get(), models.get(), metrics.get(),
                                                   kServerVersion, limits.batch_delay_us);
    infer->SetModelDirectory(model_dir.get());
    service->TEST_SetComputeDelayMs(test_compute_delay_ms);
  }

  // gRPC on `listen`: the service, health, reflection, the limits. Returns
  // the port bound (0 when it could not listen).
  int StartGrpc(const ServerOptions& options,
                const std::shared_ptr<grpc::ServerCredentials>& credentials) {
    // Ours, not gRPC's default health service, whose Watch streams are
    // unbounded (health_service.h).
    health = std::make_unique<HealthService>(std::vector<std::string>{kServiceName});
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    if (!options.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
    int port = 0;
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a busy port is an error
    builder.AddListeningPort(options.listen, credentials, &port);
    builder.SetMaxReceiveMessageSize(
        static_cast<int>(std::min<int64_t>(limits.max_receive_bytes, INT32_MAX)));
    builder.SetMaxSendMessageSize(
        static_cast<int>(std::min<int64_t>(limits.max_message_bytes, INT32_MAX)));
    // gRPC's own accounting of what its transport holds (requests being
    // received, read buffers), which the service's budget cannot see: the
    // transport's share of --max-memory-mb (memory_budget.h says what gRPC
    // does over it).
    quota.Resize(static_cast<size_t>(memory.transport_bytes));
    builder.SetResourceQuota(quota);
    SetConnectionLimits(options, &builder);
    builder.RegisterService(service.get());
    builder.RegisterService(infer.get());
    builder.RegisterService(health.get());
    grpc_server = builder.BuildAndStart();
    return grpc_server == nullptr ? 0 : port;
  }

  void SetServing(bool serving) {
    health->SetServing(serving);
    infer->SetReady(serving);
    phase = serving ? Phase::kServing : Phase::kDraining;
  }
};

Server::Server(ServerOptions options) : options_(std::move(options)) {}

Server::~Server() {
  if (state_ != nullptr && state_->grpc_server != nullptr && !drained_) Drain();
}

int Server::admin_port() const {
  return state_ != nullptr && state_->admin != nullptr ? state_->admin->port() : 0;
}

absl::Status Server::Start() {
  if (absl::Status s = ValidateServerOptions(options_); !s.ok()) return s;
  gpr_set_log_function(GrpcLog);
  google::protobuf::SetLogHandler(ProtobufLog);
  ConfigureAllocator();
  // Before the admin endpoint, whose /metrics reads the budget until it stops.
  int64_t budget_bytes = options_.max_memory_mb << 20;
  std::string budget_origin = "--max-memory-mb";
  if (options_.max_memory_mb == 0) {  // the limit is looked for only when needed
    const MemoryLimit limit = FindMemoryLimit();
    budget_bytes = DefaultMemoryBudgetBytes(limit);
    budget_origin =
        absl::StrCat(kDefaultBudgetPercent, "% of ", limit.bytes >> 20, " MiB: ", limit.source);
  }
  auto state = std::make_unique<State>(budget_bytes);
  state->budget_origin = std::move(budget_origin);
  absl::StatusOr<ServerSecurity> security = MakeServerSecurity(options_.security);
  if (!security.ok()) return security.status();
  state->certificates = std::move(security->certificates);
  state->security = DescribeSecurity(options_.security);
  AddProcessMetrics(&state->registry);
  if (!options_.admin_listen.empty()) {
    if (absl::Status s = state->StartAdmin(options_.admin_listen); !s.ok()) return s;
  }
  if (!options_.access_log.empty()) {
    absl::StatusOr<std::unique_ptr<AccessLog>> opened =
        AccessLog::Open(options_.access_log, kAccessLogBuffer);
    if (!opened.ok()) return opened.status();
    state->access_log = std::move(*opened);
  }
  absl::StatusOr<std::unique_ptr<ModelRegistry>> models = ModelRegistry::Load(options_.model_specs);
  if (!models.ok()) return models.status();
  state->models = std::move(*models);
  if (!options_.model_dir.empty()) {
    // Loaded before serving (readiness waits for them); the metrics hear of
    // later changes.
    std::set<std::string> reserved;
    for (const ModelRegistry::Entry& e : state->models->All()) reserved.insert(e.name);
    State* s = state.get();
    state->model_dir = std::make_unique<ModelDirectory>(
        ModelDirectory::Options{options_.model_dir, absl::Seconds(options_.model_poll_seconds),
                                &state->budget},
        state->models.get(), std::move(reserved),
        [s](const std::string& name, const std::string& result, int64_t version, int64_t previous) {
          if (s->metrics == nullptr) return;  // at start: counted below
          if (result == "loaded") {
            s->metrics->ModelLoaded(name, version, previous);
          } else if (result == "removed") {
            s->metrics->ModelRemoved(name, version);
          } else {
            s->metrics->ModelLoadFailed(name, result);
          }
        });
    if (absl::Status st = state->model_dir->Scan(); !st.ok()) return st;
  }
  state->BuildService(options_, test_compute_delay_ms_);
  if (state->model_dir != nullptr) state->model_dir->StartPolling();
  const int port = state->StartGrpc(options_, security->credentials);
  if (port == 0) {
    if (state->grpc_server != nullptr) state->grpc_server->Shutdown();
    state->executor->Shutdown();
    return absl::InvalidArgumentError(absl::StrCat("--listen: cannot listen on ", options_.listen,
                                                   " (address in use, or not HOST:PORT)"));
  }
  grpc_started = true;
  state->SetServing(true);
  target_ = options_.listen.rfind("unix:", 0) == 0
                ? options_.listen
                : absl::StrCat(options_.listen.substr(0, options_.listen.rfind(':')), ":", port);
  state_ = std::move(state);
  return absl::OkStatus();
}

std::string Server::Summary() const {
  const State& s = *state_;
  const Executor& executor = *s.executor;
  return absl::StrFormat(
      "listening on %s; %s; models: %s; compute: %d worker(s) x %d thread(s)%s; memory budget "
      "%d MiB (%s; %d for requests being received, %d for requests being served; requests up to "
      "%d MiB, %d received at once); fixed part %d MiB (resident now); allocator %s",
      target_, s.security, s.models->Names(), executor.workers(), executor.threads_per_worker(),
      executor.pinned_cpus().empty() ? "" : " on CPUs " + executor.pinned_cpus(),
      (s.memory.transport_bytes + s.memory.served_bytes) >> 20, s.budget_origin,
      s.memory.transport_bytes >> 20, s.memory.served_bytes >> 20, s.limits.max_receive_bytes >> 20,
      s.limits.receive_slots, ResidentBytes() >> 20, AllocatorName());
}

void Server::ReloadModels() {
  if (state_ != nullptr && state_->model_dir != nullptr) state_->model_dir->Wake();
}

void Server::Drain() {
  if (state_ == nullptr || drained_) return;
  drained_ = true;
  State& s = *state_;
  s.SetServing(false);
  // Watch streams are told NOT_SERVING, then finished: they would hold
  // Shutdown to its deadline.
  s.health->Shutdown();
  s.service->DrainDecodeStreams();
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(options_.drain_seconds * 1000));
  // Shutdown refuses new calls at once and lets running ones finish until the
  // deadline (then cancels them). It also waits for every client connection
  // to close, so a client that merely keeps its channel open would hold the
  // drain to the deadline: once no call of ours has been left for kQuiet,
  // the connections are closed (health Watch and reflection streams are not
  // counted: they end here too). kQuiet lets Shutdown begin and the clients
  // read the last responses. A unary request waiting for a receive slot
  // or being received counts as a call (server/receive_gate.h).
  constexpr auto kQuiet = std::chrono::milliseconds(250);
  std::atomic<bool> shut_down{false};
  std::thread stopper([&] {
    s.grpc_server->Shutdown(deadline);
    shut_down = true;
  });
  auto quiet_since = std::chrono::steady_clock::now();
  bool closed = false;
  while (!shut_down) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const auto now = std::chrono::steady_clock::now();
    if (s.service->active_calls() > 0) {
      quiet_since = now;
    } else if (!closed && now - quiet_since >= kQuiet) {
      grpc_server_cancel_all_calls(s.grpc_server->c_server());
      closed = true;
    }
  }
  stopper.join();
  s.executor->Shutdown();
}

int RunServer(const ServerOptions& options) {
  // A closed pipe (--access-log - read by a process that exited) makes
  // writes fail with EPIPE instead of ending the process.
  std::signal(SIGPIPE, SIG_IGN);
  // Debian's Abseil is built with deadlock detection on: every lock of an
  // absl::Mutex (ours and gRPC's) would update a global lock graph.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Signals are taken by sigwait below, so block them before any thread
  // starts: the two that drain, and those whose default action would end the
  // process without a drain (an operator's SIGHUP expecting a reload, stray
  // SIGUSR1/2 or SIGALRM), which are logged and ignored.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  Server server(options);
  if (const char* delay = std::getenv("ATTENTION_TEST_FAULT_DELAY_MS")) {
    server.TEST_SetComputeDelayMs(std::atoi(delay));
  }
  if (absl::Status s = server.Start(); !s.ok()) {
    std::fprintf(stderr, "attention-server: error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("attention-server: %s\n", server.Summary().c_str());
  std::fflush(stdout);
  int signal = 0;
  while (sigwait(&signals, &signal) == 0 && signal != SIGINT && signal != SIGTERM) {
    if (signal == SIGHUP && !options.model_dir.empty()) {
      std::printf("attention-server: SIGHUP: checking --model-dir %s now\n",
                  options.model_dir.c_str());
      std::fflush(stdout);
      server.ReloadModels();
      continue;
    }
    std::printf("attention-server: %s ignored (%s)\n", strsignal(signal),
                signal == SIGHUP ? "certificates and tokens are re-read when their files change"
                                 : "SIGTERM or SIGINT drains and stops");
    std::fflush(stdout);
  }
  std::printf("attention-server: %s: draining (up to %.0f s)\n",
              signal == SIGINT ? "SIGINT" : "SIGTERM", options.drain_seconds);
  std::fflush(stdout);
  server.Drain();
  std::printf("attention-server: stopped\n");
  return 0;
}

}  // namespace server
}  // namespace attention
