// attention-server: serves multi-head attention over gRPC.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "HOST:PORT to listen on (port 0 picks a free one), or unix:PATH");
ABSL_FLAG(std::vector<std::string>, model, {},  // parsed by hand (repeatable)
          "NAME=PATH of a safetensors model (nn.MultiheadAttention weights); repeat the flag "
          "or separate with commas to load several");
ABSL_FLAG(int, threads, 0, "compute threads in all (0 = every core)");
ABSL_FLAG(int, workers, 1, "requests computed at once; each gets threads/workers OpenMP threads");
ABSL_FLAG(bool, pin_threads, true,
          "pin each compute thread to its own CPU when the process may use exactly --threads CPUs");
ABSL_FLAG(int, max_queue, 64,
          "requests waiting for compute; beyond that calls get RESOURCE_EXHAUSTED at once");
ABSL_FLAG(int64_t, max_message_mb, 256, "largest request and response message, MiB");
ABSL_FLAG(int64_t, max_request_memory_mb, 2048,
          "estimated memory one request may use (inputs, scores, outputs), MiB; "
          "larger requests get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_stream_in_flight, 4,
          "messages of one stream read but not yet answered (flow control)");
ABSL_FLAG(double, drain_seconds, 10,
          "on SIGTERM/SIGINT, how long running calls may take before they are cancelled");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require client certificates it signed");
ABSL_FLAG(std::string, auth_token_file, "", "bearer tokens, one a line (needs TLS)");
ABSL_FLAG(bool, reflection, true, "serve gRPC server reflection");
ABSL_FLAG(std::string, admin_listen, "",
          "HOST:PORT of the admin HTTP endpoint (/metrics, /healthz, /readyz); empty: none");
ABSL_FLAG(std::string, access_log, "", "file to append one JSON line per call to, - for stdout");
ABSL_FLAG(int64_t, batch_delay_us, 0, "dynamic batching: longest wait for company, us (0 = off)");
ABSL_FLAG(int, batch_max_size, 32, "dynamic batching: requests merged into one computation");
ABSL_FLAG(int64_t, max_memory_mb, 0,
          "budget for everything held for requests, MiB; 0 = 60% of the memory limit");
ABSL_FLAG(int, max_concurrent_streams, 100, "concurrent calls per connection");
ABSL_FLAG(int, max_connection_idle_seconds, 300, "close connections idle this long; 0 = never");
ABSL_FLAG(int, max_connection_age_seconds, 0, "close connections this old; 0 = never");
ABSL_FLAG(int, max_connection_age_grace_seconds, 30, "calls' time to finish on an aged connection");
ABSL_FLAG(int, min_client_ping_seconds, 30,
          "a client pinging more often without calls is disconnected");

namespace {

constexpr char kHelp[] =
    R"(attention-server: serves multi-head attention (attention.v1.AttentionService),
grpc.health.v1.Health and server reflection over gRPC.

usage: attention-server [flags]
  e.g. attention-server --listen 0.0.0.0:50051 --model demo=models/demo.safetensors

listening:
  --listen HOST:PORT            where to listen (default 0.0.0.0:50051; port 0 picks a free one);
                                unix:PATH for a unix socket (a client on the same host)
  --model NAME=PATH             a safetensors model (nn.MultiheadAttention weights, written by
                                scripts/export_model.py); repeat the flag to load several

compute:
  --threads N                   compute threads in all (default 0 = every core)
  --workers N                   requests computed at once, each with threads/workers OpenMP
                                threads (default 1: one request at a time on every core)
  --pin-threads=true|false      pin each compute thread to a CPU of its own, when the process may
                                run on exactly --threads CPUs (a container's cpuset, a machine of
                                that size; never on a larger, shared set). Default true: unpinned,
                                small calls after an idle moment can take milliseconds longer
  --batch-delay-us N            dynamic batching of small requests (default 0 = off): requests
                                for the same model (or none) with the same shapes past the batch
                                dimension and options are merged into one computation. A
                                request that finds compute idle starts at once; under concurrent
                                traffic it may wait up to N microseconds for others (e.g. 500)
  --batch-max-size N            requests merged into one computation at most (default 32)

limits:
  --max-queue N                 requests waiting for compute; beyond that calls get
                                RESOURCE_EXHAUSTED at once (default 64). Once 3/4 of it wait,
                                a connection holding a quarter of it is refused (fairness)
  --max-message-mb N            largest request and response message, MiB (default 256)
  --max-request-memory-mb N     estimated memory one request may use (inputs, scores, outputs),
                                MiB; larger requests get RESOURCE_EXHAUSTED (default 2048)
  --max-stream-in-flight N      messages of one stream read but not yet answered (default 4)
  --max-memory-mb N             memory for everything the server holds for requests: a quarter
                                for requests still being received (gRPC's resource quota: over it,
                                uploads are cancelled), the rest for requests being served
                                (messages, compute buffers, responses not yet written; a request
                                that does not fit gets RESOURCE_EXHAUSTED at once). Requests larger
                                than the quarter cannot be received (the quota cuts them).
                                Default 0: 60% of the container's memory limit (cgroup), or of
                                physical memory

connections:
  --max-concurrent-streams N    calls open at once on one connection (default 100)
  --max-connection-idle-seconds N
                                close a connection without calls for N s (default 300; 0 never)
  --max-connection-age-seconds N
                                close connections N s old, so that long-lived clients reconnect
                                and spread over replicas (default 0: never; e.g. 1800 behind a
                                load balancer)
  --max-connection-age-grace-seconds N
                                how long calls on an aged connection may still take (default 30)
  --min-client-ping-seconds N   a client that pings more often than every N s while it has no
                                calls is disconnected after 2 strikes (default 30); the server
                                pings idle connections every 60 s to find dead peers
  --drain-seconds X             on SIGTERM/SIGINT: health turns NOT_SERVING, new calls are
                                refused, running calls get X seconds before they are cancelled
                                (default 10); then the server exits 0

observability:
  --admin-listen HOST:PORT      plain HTTP endpoint for probes and scrapers (default: none):
                                GET /metrics (Prometheus text format), /healthz (200 while
                                alive), /readyz (200 serving, 503 starting or draining). Port 0
                                picks a free one (printed at start). Keep it off public networks
  --access-log PATH|-           one JSON object a line per call and per stream message (time,
                                peer, rpc, model, shapes, code, bytes, queue and compute ms),
                                appended to PATH or written to stdout (-); never tensor data.
                                Lines the writer cannot keep up with are dropped and counted
                                (attention_access_log_dropped_total). Default: none

security (files are re-read when they change: rotation without a restart):
  --tls-cert PATH --tls-key PATH
                                serve TLS with this PEM certificate chain and private key
                                (default: plaintext; start-up fails on unreadable or mismatched
                                files)
  --tls-client-ca PATH          also require a client certificate signed by a CA in this PEM
                                bundle (mutual TLS)
  --auth-token-file PATH        require 'authorization: Bearer TOKEN' on every call but health
                                checks (UNAUTHENTICATED otherwise); one token a line, blank lines
                                and # comments ignored. Needs TLS: a token sent in plaintext can
                                be read by anyone on the path
  --reflection=true|false       serve gRPC server reflection (default true; behind tokens when
                                they are required)

other:
  --help                        this text
)";

}  // namespace

int main(int argc, char** argv) {
  // Flags are spelled with dashes (--max-message-mb); absl names them with
  // underscores. --model may be repeated: collect every occurrence.
  std::vector<std::string> models;
  std::vector<std::string> normalized;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && arg.rfind("--", 0) == 0) {
      const size_t end = arg.find('=');
      std::replace(arg.begin() + 2, end == std::string::npos ? arg.end() : arg.begin() + end, '-',
                   '_');
    }
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (arg == "--access_log" && i + 1 < argc) {
      // As one argument: absl takes a separate "-" for a mistyped flag.
      normalized.push_back(arg + "=" + argv[++i]);
    } else if (arg == "--model" && i + 1 < argc) {
      models.push_back(argv[++i]);
    } else if (arg.rfind("--model=", 0) == 0) {
      models.push_back(arg.substr(8));
    } else {
      normalized.push_back(arg);
    }
  }
  std::vector<char*> rest;
  for (std::string& a : normalized) rest.push_back(a.data());
  absl::SetProgramUsageMessage("attention-server --help lists the flags");
  absl::ParseCommandLine(static_cast<int>(rest.size()), rest.data());
  attention::server::ServerConfig config;
  config.listen = absl::GetFlag(FLAGS_listen);
  for (const std::string& m : models) {
    for (absl::string_view part : absl::StrSplit(m, ',', absl::SkipEmpty())) {
      config.model_specs.emplace_back(part);
    }
  }
  config.threads = absl::GetFlag(FLAGS_threads);
  config.workers = absl::GetFlag(FLAGS_workers);
  config.pin_threads = absl::GetFlag(FLAGS_pin_threads);
  config.max_queue = absl::GetFlag(FLAGS_max_queue);
  config.max_message_mb = absl::GetFlag(FLAGS_max_message_mb);
  config.max_request_memory_mb = absl::GetFlag(FLAGS_max_request_memory_mb);
  config.max_stream_in_flight = absl::GetFlag(FLAGS_max_stream_in_flight);
  config.drain_seconds = absl::GetFlag(FLAGS_drain_seconds);
  config.security.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  config.security.tls_key = absl::GetFlag(FLAGS_tls_key);
  config.security.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  config.security.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  config.reflection = absl::GetFlag(FLAGS_reflection);
  config.admin_listen = absl::GetFlag(FLAGS_admin_listen);
  config.access_log = absl::GetFlag(FLAGS_access_log);
  config.batch_delay_us = absl::GetFlag(FLAGS_batch_delay_us);
  config.batch_max_size = absl::GetFlag(FLAGS_batch_max_size);
  config.max_memory_mb = absl::GetFlag(FLAGS_max_memory_mb);
  config.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  config.max_connection_idle_seconds = absl::GetFlag(FLAGS_max_connection_idle_seconds);
  config.max_connection_age_seconds = absl::GetFlag(FLAGS_max_connection_age_seconds);
  config.max_connection_age_grace_seconds = absl::GetFlag(FLAGS_max_connection_age_grace_seconds);
  config.min_client_ping_seconds = absl::GetFlag(FLAGS_min_client_ping_seconds);
  // Test-only fault injection, out of the flags a production user sees.
  if (const char* delay = std::getenv("ATTENTION_TEST_FAULT_DELAY_MS")) {
    config.fault_delay_ms = std::atoi(delay);
  }
  return attention::server::RunServer(config);
}
