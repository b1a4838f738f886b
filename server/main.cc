// attention-server: serves multi-head attention over gRPC.
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "HOST:PORT to listen on (port 0 picks a free one)");
ABSL_FLAG(std::vector<std::string>, model, {},
          "NAME=PATH of a safetensors model (nn.MultiheadAttention weights); repeat the flag "
          "or separate with commas to load several");
ABSL_FLAG(int, threads, 0, "compute threads in all (0 = every core)");
ABSL_FLAG(int, workers, 1,
          "requests computed at once; each gets threads/workers OpenMP threads");
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
ABSL_FLAG(int, fault_delay_ms, 0, "TEST ONLY: sleep this long before each computation");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves multi-head attention (attention.v1.AttentionService) over gRPC.\n"
      "  attention-server --listen 0.0.0.0:50051 --model demo=models/demo.safetensors");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  // --model may be repeated: collect every occurrence before absl keeps the last.
  std::vector<std::string> models;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--model" || arg == "-model") && i + 1 < argc) {
      models.push_back(argv[++i]);
    } else if (arg.rfind("--model=", 0) == 0) {
      models.push_back(arg.substr(8));
    } else {
      rest.push_back(argv[i]);
    }
  }
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
  config.max_queue = absl::GetFlag(FLAGS_max_queue);
  config.max_message_mb = absl::GetFlag(FLAGS_max_message_mb);
  config.max_request_memory_mb = absl::GetFlag(FLAGS_max_request_memory_mb);
  config.max_stream_in_flight = absl::GetFlag(FLAGS_max_stream_in_flight);
  config.drain_seconds = absl::GetFlag(FLAGS_drain_seconds);
  config.fault_delay_ms = absl::GetFlag(FLAGS_fault_delay_ms);
  return attention::server::RunServer(config);
}
