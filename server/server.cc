#include "server/server.h"

#include <grpc/support/log.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>
#include <omp.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/access_log.h"
#include "server/admin_http.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/service.h"
#include "server/model_registry.h"
#include "server/service_metrics.h"

namespace attention {
namespace server {
namespace {

constexpr char kServiceName[] = "attention.v1.AttentionService";
// Access log lines that may wait for the writer (about 300 bytes each).
constexpr size_t kAccessLogBuffer = 8192;

// What /readyz reports.
enum class Phase { kStarting, kServing, kDraining };

// gRPC's own log lines: none while starting (we print one clear line instead),
// errors only afterwards.
std::atomic<bool> grpc_started{false};
void GrpcLog(gpr_log_func_args* args) {
  if (grpc_started && args->severity == GPR_LOG_SEVERITY_ERROR) {
    std::fprintf(stderr, "attention-server: grpc: %s\n", args->message);
  }
}

// Linking gRPC's reflection library registers its plugin for every server;
// --reflection=false takes it out of this server's builder.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                                    return p->name() == "proto_server_reflection";
                                  }),
                   plugins->end());
  }
};

// Channel arguments of the connection limits (see --help): streams per
// connection, idle and age limits, and keepalive enforcement (a client that
// pings more often than min_client_ping_seconds without calls gets two strikes
// then GOAWAY; the server itself pings idle connections each minute to find
// dead peers).
void SetConnectionLimits(const ServerConfig& c, grpc::ServerBuilder* builder) {
  constexpr int kMs = 1000;
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, c.max_concurrent_streams);
  if (c.max_connection_idle_seconds > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, c.max_connection_idle_seconds * kMs);
  }
  if (c.max_connection_age_seconds > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, c.max_connection_age_seconds * kMs);
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                c.max_connection_age_grace_seconds * kMs);
  }
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              c.min_client_ping_seconds * kMs);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * kMs);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * kMs);
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "attention-server: error: %s\n", message.c_str());
  return 1;
}

}  // namespace

int RunServer(const ServerConfig& config) {
  // Signals are taken by sigwait below, so block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  gpr_set_log_function(GrpcLog);

  if (config.threads < 0 || config.workers < 1 || config.max_queue < 0 ||
      config.max_message_mb < 1 || config.max_request_memory_mb < 1 ||
      config.max_stream_in_flight < 1 || config.drain_seconds < 0 || config.max_memory_mb < 0 ||
      config.max_concurrent_streams < 1 || config.max_connection_idle_seconds < 0 ||
      config.max_connection_age_seconds < 0 || config.max_connection_age_grace_seconds < 0 ||
      config.min_client_ping_seconds < 0 || config.batch_delay_us < 0 || config.batch_max_size < 1) {
    return Fail(
        "flags: --threads >= 0, --workers >= 1, --max-queue >= 0, --max-message-mb >= 1, "
        "--max-request-memory-mb >= 1, --max-stream-in-flight >= 1, --drain-seconds >= 0, "
        "--max-memory-mb >= 0, --max-concurrent-streams >= 1, the connection seconds >= 0, "
        "--batch-delay-us >= 0, --batch-max-size >= 1");
  }
  constexpr int64_t kMaxMiB = int64_t{1} << 24;  // 16 TiB: no overflow once in bytes
  constexpr int kMaxSeconds = 1000000;           // ~11 days: no overflow once in ms
  if (config.max_message_mb > kMaxMiB || config.max_request_memory_mb > kMaxMiB ||
      config.max_memory_mb > kMaxMiB || config.batch_delay_us > 10000000 ||
      config.drain_seconds > kMaxSeconds || config.max_connection_idle_seconds > kMaxSeconds ||
      config.max_connection_age_seconds > kMaxSeconds ||
      config.max_connection_age_grace_seconds > kMaxSeconds ||
      config.min_client_ping_seconds > kMaxSeconds) {
    return Fail(
        "flags: the -mb sizes at most 16777216 (16 TiB), --batch-delay-us at most 10000000 (10 "
        "s), the seconds at most 1000000");
  }
  ConfigureAllocator();
  // Before the admin endpoint, whose /metrics reads it until it stops.
  const MemoryShares memory = SplitMemoryBudget(
      config.max_memory_mb > 0 ? config.max_memory_mb << 20 : DefaultMemoryBudgetBytes());
  MemoryBudget budget(memory.served_bytes);
  const IdleTrimmer trimmer(&budget, absl::Seconds(1));
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(config.security);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  // The admin endpoint comes first, so that probes see the server starting
  // (alive, not ready) while the models load.
  Registry registry;
  AddProcessMetrics(&registry);
  std::atomic<Phase> phase{Phase::kStarting};
  std::unique_ptr<AccessLog> access_log;  // declared first: destroyed after what writes to it
  std::unique_ptr<AdminServer> admin;
  if (!config.admin_listen.empty()) {
    AdminServer::Handlers handlers;
    handlers.metrics = [&registry] { return registry.Exposition(); };
    handlers.not_ready = [&phase]() -> std::string {
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
        AdminServer::Start(config.admin_listen, std::move(handlers));
    if (!started.ok()) return Fail(std::string(started.status().message()));
    admin = std::move(*started);
    const std::string host = config.admin_listen.substr(0, config.admin_listen.rfind(':'));
    std::printf("attention-server: admin endpoint on http://%s:%d (/metrics /healthz /readyz)\n",
                host.c_str(), admin->port());
    std::fflush(stdout);
  }
  if (!config.access_log.empty()) {
    absl::StatusOr<std::unique_ptr<AccessLog>> opened =
        AccessLog::Open(config.access_log, kAccessLogBuffer);
    if (!opened.ok()) return Fail(std::string(opened.status().message()));
    access_log = std::move(*opened);
  }

  absl::StatusOr<std::unique_ptr<ModelRegistry>> models = ModelRegistry::Load(config.model_specs);
  if (!models.ok()) return Fail(std::string(models.status().message()));

  const int threads = config.threads > 0 ? config.threads : omp_get_num_procs();
  Executor executor({config.workers, std::max(1, threads / config.workers),
                     static_cast<size_t>(config.max_queue), config.pin_threads});
  ServiceLimits limits;
  limits.max_message_bytes = config.max_message_mb << 20;
  // A request larger than the transport's share of the memory can never be
  // received whole, so the receive limit is at most that share (the start
  // line and ListModels say it). gRPC checks the size only once a message has
  // arrived, so such a request is usually cut by the quota before.
  limits.max_receive_bytes = std::min(limits.max_message_bytes, memory.transport_bytes);
  limits.max_request_memory_bytes = config.max_request_memory_mb << 20;
  limits.max_stream_in_flight = config.max_stream_in_flight;
  limits.max_queue = config.max_queue;
  limits.fault_delay_ms = config.fault_delay_ms;
  limits.batch_delay_us = config.batch_delay_us;
  limits.batch_max_size = config.batch_max_size;
  limits.memory_budget = &budget;
  registry.AddCallback("attention_memory_budget_limit_bytes",
                       "The share of --max-memory-mb for requests being served.",
                       "gauge", [&budget] { return static_cast<double>(budget.limit()); });
  registry.AddCallback("attention_memory_budget_used_bytes",
                       "Bytes of the memory budget reserved by requests being served.", "gauge",
                       [&budget] { return static_cast<double>(budget.used()); });
  ServiceMetrics::Options metrics_options;
  for (const Model* m : (*models)->All()) metrics_options.models.push_back(m->info().name);
  metrics_options.max_request_memory_bytes = limits.max_request_memory_bytes;
  metrics_options.max_message_bytes = limits.max_message_bytes;
  metrics_options.max_queue = limits.max_queue;
  ServiceMetrics metrics(&registry, metrics_options, access_log.get());
  AttentionServiceImpl service(models->get(), &executor, limits, &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!config.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  int port = 0;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a busy port is an error
  builder.AddListeningPort(config.listen, *credentials, &port);
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(limits.max_receive_bytes, INT32_MAX)));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(limits.max_message_bytes, INT32_MAX)));
  // gRPC's own accounting of what its transport holds (requests being
  // received, read buffers), which the service's budget cannot see: the
  // transport's share of --max-memory-mb (memory_budget.h says what gRPC does
  // over it).
  grpc::ResourceQuota quota("attention-server");
  quota.Resize(static_cast<size_t>(memory.transport_bytes));
  builder.SetResourceQuota(quota);
  SetConnectionLimits(config, &builder);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail("cannot listen on " + config.listen + " (address in use, or not HOST:PORT)");
  }
  grpc_started = true;
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus(kServiceName, true);
  phase = Phase::kServing;

  // HOST:PORT with the port gRPC picked (port 0), or a unix: socket path as given.
  const std::string address =
      config.listen.rfind("unix:", 0) == 0
          ? config.listen
          : config.listen.substr(0, config.listen.rfind(':')) + ":" + std::to_string(port);
  std::printf(
      "attention-server: listening on %s; %s; models: %s; compute: %d worker(s) x %d "
      "thread(s)%s; memory budget %lld MiB (%lld for requests being received, %lld for "
      "requests being served; requests up to %lld MiB)\n",
      address.c_str(), DescribeSecurity(config.security).c_str(), (*models)->Names().c_str(), executor.workers(),
      executor.threads_per_worker(),
      executor.pinned_cpus().empty() ? "" : (" on CPUs " + executor.pinned_cpus()).c_str(),
      static_cast<long long>((memory.transport_bytes + memory.served_bytes) >> 20),
      static_cast<long long>(memory.transport_bytes >> 20),
      static_cast<long long>(memory.served_bytes >> 20),
      static_cast<long long>(limits.max_receive_bytes >> 20));
  std::fflush(stdout);

  int signal = 0;
  sigwait(&signals, &signal);
  std::printf("attention-server: %s: draining (up to %.0f s)\n",
              signal == SIGINT ? "SIGINT" : "SIGTERM", config.drain_seconds);
  std::fflush(stdout);
  phase = Phase::kDraining;
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(config.drain_seconds * 1000));
  // Shutdown refuses new calls at once and lets running ones finish until the
  // deadline (then cancels them). It also waits for every client connection
  // to close, so a client that merely keeps its channel open would hold the
  // drain to the deadline: once no call of ours has been left for kQuiet,
  // the connections are closed (health Watch and reflection streams are not
  // counted: they end here too). kQuiet lets Shutdown begin and the clients
  // read the last responses. A unary request still being received is not
  // counted (gRPC hands it to the service only once it has all of it): if
  // its upload outlasts kQuiet it is cancelled, as at the deadline.
  constexpr auto kQuiet = std::chrono::milliseconds(250);
  std::atomic<bool> shut_down{false};
  std::thread stopper([&] {
    server->Shutdown(deadline);
    shut_down = true;
  });
  auto quiet_since = std::chrono::steady_clock::now();
  bool closed = false;
  while (!shut_down) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const auto now = std::chrono::steady_clock::now();
    if (service.active_calls() > 0) {
      quiet_since = now;
    } else if (!closed && now - quiet_since >= kQuiet) {
      grpc_server_cancel_all_calls(server->c_server());
      closed = true;
    }
  }
  stopper.join();
  executor.Shutdown();
  std::printf("attention-server: stopped\n");
  return 0;
}

}  // namespace server
}  // namespace attention
