// The attention-server process: loads models, serves attention.v1 plus
// grpc.health.v1 and reflection, and drains on SIGTERM / SIGINT.
//
//   ServerConfig config;
//   config.listen = "127.0.0.1:0";
//   config.model_specs = {"demo=models/demo.safetensors"};
//   return RunServer(config);   // blocks until a signal; 0 after a clean drain
#ifndef SERVER_SERVER_H_
#define SERVER_SERVER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "server/security.h"

namespace attention {
namespace server {

struct ServerConfig {
  std::string listen = "0.0.0.0:50051";
  std::vector<std::string> model_specs;  // NAME=PATH
  int threads = 0;                       // compute threads in all; 0 = every core
  int workers = 1;                       // requests computed at once
  bool pin_threads = true;               // see Executor::Options::pin_threads
  int max_queue = 64;                    // requests waiting for compute
  int64_t max_message_mb = 256;
  int64_t max_request_memory_mb = 2048;
  int max_stream_in_flight = 4;
  int64_t max_memory_mb = 0;  // the memory budget; 0 = DefaultMemoryBudgetBytes()
  // Connections (see --help): streams per connection; idle and age limits
  // (0 = none) with the grace given to calls on an aged connection; the
  // shortest interval between a client's pings without calls.
  int max_concurrent_streams = 100;
  int max_connection_idle_seconds = 300;
  int max_connection_age_seconds = 0;
  int max_connection_age_grace_seconds = 30;
  int min_client_ping_seconds = 30;
  double drain_seconds = 10;
  SecurityConfig security;   // TLS, client certificates, tokens
  bool reflection = true;    // serve grpc.reflection
  std::string admin_listen;  // HOST:PORT of the admin HTTP endpoint; empty: none
  std::string access_log;    // a file to append to, "-" for stdout; empty: none
  int fault_delay_ms = 0;    // test-only (ATTENTION_TEST_FAULT_DELAY_MS)
  int64_t batch_delay_us = 0;  // dynamic batching (server/batcher.h); 0 = off
  int batch_max_size = 32;
};

// Runs the server until SIGTERM or SIGINT, then drains: health NOT_SERVING,
// no new calls, in-flight calls get drain_seconds to finish (then they are
// cancelled). With admin_listen, the admin endpoint (server/admin_http.h)
// listens from before the models load until the drain ends: /readyz answers
// 503 while starting and draining. Returns the process exit code: 0 after a drain, 1 when it could
// not start (the reason printed as one line on stderr).
int RunServer(const ServerConfig& config);

}  // namespace server
}  // namespace attention

#endif  // SERVER_SERVER_H_
