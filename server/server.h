// The attention-server process as an object: its options, Start() (which
// validates them, loads the models and opens the ports) and Drain().
// RunServer wraps it for main(): it waits for SIGTERM / SIGINT between the
// two.
//
//   ServerOptions options;
//   options.listen = "127.0.0.1:0";
//   options.model_specs = {"demo=models/demo.safetensors"};
//   Server server(options);
//   absl::Status s = server.Start();  // InvalidArgument naming the flag at fault
//   ... call server.target() ...
//   server.Drain();                   // health NOT_SERVING, calls finish, ports close
//
// It serves attention.v1 plus grpc.health.v1 and reflection; with
// admin_listen, the admin endpoint (server/admin_http.h) listens from before
// the models load until the drain ends, and /readyz answers 503 while starting
// and draining.
#ifndef SERVER_SERVER_H_
#define SERVER_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/security.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace attention {
namespace server {

// Every knob of the server; the initializers are the defaults that --help
// shows (server/flags.h binds each field to its flag).
struct ServerOptions {
  std::string listen = "0.0.0.0:50051";
  std::vector<std::string> model_specs;  // NAME=PATH
  std::string model_dir;                 // --model-dir (empty: none)
  int model_poll_seconds = 10;
  int threads = 0;          // compute threads in all; 0 = every core
  int workers = 1;          // requests computed at once
  bool pin_threads = true;  // see Executor::Options::pin_threads
  int max_queue = 64;       // requests waiting for compute
  int64_t max_message_mb = 256;
  int64_t max_request_memory_mb = 2048;
  int64_t max_request_gflop = 1000;  // AttentionPlanInfo::work, GFLOP; 0 = none
  int max_stream_in_flight = 4;
  // An upload holding a receive slot this long while others wait is cancelled
  // (server/receive_gate.h); 0: never.
  int receive_timeout_seconds = 30;
  int64_t max_memory_mb = 0;  // the memory budget; 0 = DefaultMemoryBudgetBytes()
  // StreamDecode: keys one sequence may hold, sequences one stream may hold,
  // and how long an untouched sequence is kept (server/decode_stream.h).
  int64_t max_sequence_tokens = 32768;
  int max_sequences_per_stream = 64;
  int sequence_idle_seconds = 600;
  // Connections: streams per connection; idle and age limits (0 = none) with
  // the grace given to calls on an aged connection; the shortest interval
  // between a client's pings without calls.
  int max_concurrent_streams = 100;
  int max_connection_idle_seconds = 300;
  int max_connection_age_seconds = 0;
  int max_connection_age_grace_seconds = 30;
  int min_client_ping_seconds = 30;
  double drain_seconds = 10;
  SecurityConfig security;     // TLS, client certificates, tokens
  bool reflection = true;      // serve grpc.reflection
  std::string admin_listen;    // HOST:PORT of the admin HTTP endpoint; empty: none
  std::string access_log;      // a file to append to, "-" for stdout; empty: none
  int64_t batch_delay_us = 0;  // dynamic batching (server/batcher.h); 0 = off
  int batch_max_size = 32;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  // Drains (without waiting for calls) if Start succeeded and Drain was not
  // called.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Validates the options (one flag at a time: InvalidArgument "--workers:
  // must be at least 1, got 0"), opens the admin endpoint and the access log,
  // loads the models and starts serving. On error nothing is left running.
  // Call once.
  absl::Status Start();

  // HOST:PORT with the port gRPC picked (port 0), or the unix: path as given.
  const std::string& target() const { return target_; }
  // The admin endpoint's port; 0 without one.
  int admin_port() const;
  // The line printed once serving: where, security, models, compute, memory.
  std::string Summary() const;

  // Health turns NOT_SERVING, new calls are refused, running calls get
  // drain_seconds to finish (then they are cancelled); returns once the ports
  // are closed and compute has stopped. Idempotent.
  void Drain();
  // SIGHUP: checks --model-dir for changed models now (nothing without one).
  void ReloadModels();

  // Test seam: every computation first sleeps `ms` (a stalled computation
  // for the drain and deadline tests). Call before Start.
  void TEST_SetComputeDelayMs(int ms) { test_compute_delay_ms_ = ms; }

 private:
  struct State;  // what Start builds, torn down in reverse order

  const ServerOptions options_;
  std::unique_ptr<State> state_;
  std::string target_;
  bool drained_ = false;
  int test_compute_delay_ms_ = 0;
};

// main()'s server: blocks SIGINT and SIGTERM, starts a Server (printing its
// summary line, or one line naming the problem on stderr), waits for a
// signal and drains. Returns the exit code: 0 after a drain, 1 when it could
// not start. The environment variable ATTENTION_TEST_FAULT_DELAY_MS sets the
// test seam above (end-to-end tests of stalled computations).
int RunServer(const ServerOptions& options);

}  // namespace server
}  // namespace attention

#endif  // SERVER_SERVER_H_
