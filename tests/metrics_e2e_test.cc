// End to end: the admin endpoint of a real attention-server on 127.0.0.1
// (metrics after real calls, refusals by reason, probes while draining), the
// exposition checked by promtool and scraped by a real Prometheus server,
// and the access log.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

extern char** environ;

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;
using Clock = std::chrono::steady_clock;

// A TCP port on 127.0.0.1 nobody listened on a moment ago.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string TempDir(const std::string& name) {
  std::string dir =
      std::filesystem::temp_directory_path() / (name + "." + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

v1::SelfAttentionRequest DemoRequest(int length, const std::string& model = "demo") {
  std::vector<float> x(length * 64, 0.25f);
  v1::SelfAttentionRequest r;
  *r.mutable_input() = client::MakeTensor({1, length, 64}, x.data(), DType::kFloat32);
  r.mutable_options()->set_model(model);
  return r;
}

std::vector<std::string> Flags(std::vector<std::string> extra) {
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--admin-listen=127.0.0.1:0");
  flags.insert(flags.end(), extra.begin(), extra.end());
  return flags;
}

// A Prometheus server on loopback scraping `target` every second, with its
// storage in a directory of its own; stopped with the object.
class Prometheus {
 public:
  Prometheus(const std::string& dir, int target_port) : port_(FreePort()) {
    const std::string config = dir + "/prometheus.yml";
    std::ofstream(config) << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          << "scrape_configs:\n  - job_name: attention\n    static_configs:\n"
                          << "      - targets: ['127.0.0.1:" << target_port << "']\n";
    const std::vector<std::string> argv = {
        "prometheus", "--config.file=" + config, "--storage.tsdb.path=" + dir + "/data",
        "--web.listen-address=127.0.0.1:" + std::to_string(port_), "--log.level=warn"};
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir + "/prometheus.log";
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (posix_spawnp(&pid_, "prometheus", &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Prometheus() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  bool ok() const { return pid_ > 0; }

  // The value of the instant query's single result as Prometheus spells it
  // ("" while there is none, e.g. before the first scrape).
  std::string Query(const std::string& promql) {
    httplib::Client http("127.0.0.1", port_);
    http.set_connection_timeout(1);
    httplib::Result r = http.Get("/api/v1/query", {{"query", promql}}, httplib::Headers{});
    if (!r || r->status != 200) return "";
    const nlohmann::json reply = nlohmann::json::parse(r->body, nullptr, false);
    if (reply.is_discarded() || reply["data"]["result"].size() != 1) return "";
    return reply["data"]["result"][0]["value"][1].get<std::string>();
  }

 private:
  const int port_;
  pid_t pid_ = -1;
};

TEST(MetricsE2E, CountersReadTheCallsMadePromtoolAndPrometheusAgreeAndTheAccessLogHasEach) {
  const std::string dir = TempDir("attention-metrics-e2e");
  const std::string access_log = dir + "/access.log";
  ServerProcess server(Flags({"--access-log=" + access_log}));
  ASSERT_TRUE(server.ok()) << server.Output();
  const int admin = AdminPort(server);
  ASSERT_GT(admin, 0) << server.Output();
  EXPECT_EQ(HttpGet(admin, "/healthz"), 200);
  EXPECT_EQ(HttpGet(admin, "/readyz"), 200);

  constexpr int kCalls = 5;
  AttentionClient c(AttentionClient::Connect(server.target()));
  for (int i = 0; i < kCalls; ++i) ASSERT_TRUE(c.SelfAttention(DemoRequest(4), {10}).ok());
  std::vector<v1::SelfAttentionRequest> messages(3, DemoRequest(3));
  messages[1] = DemoRequest(3, "no-such-model");  // answered with an error in the stream
  ASSERT_TRUE(c.StreamSelfAttention(messages, 2, {10}).ok());
  EXPECT_EQ(c.SelfAttention(DemoRequest(4, "no-such-model"), {10}).status().code(),
            absl::StatusCode::kNotFound);

  std::string text;
  ASSERT_EQ(HttpGet(admin, "/metrics", &text), 200);
  auto requests = [&](const std::string& rpc, const std::string& model, const std::string& code) {
    return Sample(text, "attention_requests_total{rpc=\"" + rpc + "\",model=\"" + model +
                            "\",code=\"" + code + "\"}");
  };
  EXPECT_EQ(requests("SelfAttention", "demo", "OK"), kCalls) << text;
  EXPECT_EQ(requests("SelfAttention", "unknown", "NOT_FOUND"), 1);
  EXPECT_EQ(requests("StreamSelfAttention", "demo", "OK"), 2);
  EXPECT_EQ(requests("StreamSelfAttention", "unknown", "NOT_FOUND"), 1);
  const std::string demo = "{rpc=\"SelfAttention\",model=\"demo\"";
  EXPECT_EQ(Sample(text, "attention_request_duration_seconds_count" + demo + "}"), kCalls);
  EXPECT_EQ(Sample(text, "attention_request_duration_seconds_bucket" + demo + ",le=\"+Inf\"}"),
            kCalls);
  EXPECT_EQ(Sample(text, "attention_request_queue_seconds_count" + demo + "}"), kCalls);
  EXPECT_EQ(Sample(text, "attention_request_compute_seconds_count" + demo + "}"), kCalls);
  EXPECT_GT(Sample(text, "attention_request_bytes_total" + demo + "}"), kCalls * 4 * 64 * 4);
  EXPECT_GT(Sample(text, "attention_response_bytes_total" + demo + "}"), kCalls * 4 * 64 * 4);
  EXPECT_EQ(Sample(text, "attention_model_info{model=\"demo\",version=\"1\"}"), 1);
  EXPECT_EQ(Sample(text, "attention_streams_open{rpc=\"StreamSelfAttention\"}"), 0);
  EXPECT_EQ(Sample(text, "attention_requests_queued"), 0);
  EXPECT_GT(Sample(text, "process_resident_memory_bytes"), 1 << 20);
  EXPECT_GT(Sample(text, "process_open_fds"), 3);

  // promtool lints what /metrics serves.
  std::ofstream(dir + "/metrics.txt") << text;
  std::string lint;
  EXPECT_EQ(
      RunCommand({"/bin/sh", "-c", "promtool check metrics < " + dir + "/metrics.txt"}, &lint, 30),
      0)
      << lint;
  EXPECT_EQ(lint, "");

  // A real Prometheus scrapes it unchanged.
  Prometheus prometheus(dir, admin);
  ASSERT_TRUE(prometheus.ok()) << "prometheus is not installed (scripts/install-deps.sh)";
  std::string up, calls;
  const auto end = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < end && (up != "1" || calls.empty())) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    up = prometheus.Query("up{job=\"attention\"}");
    calls = prometheus.Query("attention_requests_total{rpc=\"SelfAttention\",code=\"OK\"}");
  }
  EXPECT_EQ(up, "1");
  EXPECT_EQ(calls, std::to_string(kCalls));

  // The access log: one JSON object per call and stream message, no tensor data.
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
  std::ifstream in(access_log);
  std::map<std::string, int> by_rpc;
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    SCOPED_TRACE(line);
    const nlohmann::json entry = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(entry.is_object());
    for (const char* key : {"time", "peer", "rpc", "model", "shapes", "code", "bytes_in",
                            "bytes_out", "queue_ms", "compute_ms"}) {
      EXPECT_TRUE(entry.contains(key)) << key;
    }
    EXPECT_THAT(entry["peer"].get<std::string>(), ::testing::HasSubstr("127.0.0.1"));
    EXPECT_LT(line.size(), 600u);  // shapes, never the tensors
    ++by_rpc[entry["rpc"].get<std::string>() + " " + entry["code"].get<std::string>()];
    if (entry["rpc"] == "SelfAttention" && entry["code"] == "OK") {
      EXPECT_EQ(entry["shapes"]["input"], nlohmann::json({1, 4, 64}));
      EXPECT_EQ(entry["model"], "demo");
    }
  }
  EXPECT_EQ(lines, kCalls + 3 + 1);
  EXPECT_EQ(by_rpc["SelfAttention OK"], kCalls);
  EXPECT_EQ(by_rpc["SelfAttention NOT_FOUND"], 1);
  EXPECT_EQ(by_rpc["StreamSelfAttention OK"], 2);
  EXPECT_EQ(by_rpc["StreamSelfAttention NOT_FOUND"], 1);
  std::filesystem::remove_all(dir);
}

TEST(MetricsE2E, RefusedCallsCountUnderTheirReason) {
  // One worker, one waiting place, 300 ms a computation, 1 MiB per request.
  ServerProcess server(
      Flags({"--workers=1", "--max-queue=1", "--max-request-memory-mb=1", "--drain-seconds=5"}),
      FaultDelay(300));
  ASSERT_TRUE(server.ok()) << server.Output();
  const int admin = AdminPort(server);
  AttentionClient c(AttentionClient::Connect(server.target()));
  // 600 x 600 scores per head alone are over 1 MiB.
  EXPECT_EQ(c.SelfAttention(DemoRequest(600), {10}).status().code(),
            absl::StatusCode::kResourceExhausted);
  std::atomic<int> saturated{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      // A connection each: one connection alone would meet its share first.
      AttentionClient own(AttentionClient::ConnectAlone(server.target()));
      if (own.SelfAttention(DemoRequest(4), {20}).status().code() ==
          absl::StatusCode::kResourceExhausted) {
        ++saturated;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GE(saturated.load(), 1);
  std::string text;
  ASSERT_EQ(HttpGet(admin, "/metrics", &text), 200);
  EXPECT_EQ(Sample(text, "attention_refusals_total{rpc=\"SelfAttention\",reason=\"memory_limit\"}"),
            1)
      << text;
  EXPECT_EQ(Sample(text, "attention_refusals_total{rpc=\"SelfAttention\",reason=\"queue_full\"}"),
            saturated.load());
  EXPECT_EQ(Sample(text,
                   "attention_requests_total{rpc=\"SelfAttention\",model=\"demo\","
                   "code=\"RESOURCE_EXHAUSTED\"}"),
            saturated.load() + 1);
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

TEST(MetricsE2E, ReadyzTurns503WhenTheDrainStartsWhileHealthzStays200) {
  ServerProcess server(Flags({"--workers=1", "--drain-seconds=10"}), FaultDelay(1500));
  ASSERT_TRUE(server.ok()) << server.Output();
  const int admin = AdminPort(server);
  ASSERT_EQ(HttpGet(admin, "/readyz"), 200);
  AttentionClient c(AttentionClient::Connect(server.target()));
  absl::Status slow;
  std::thread call([&] { slow = c.SelfAttention(DemoRequest(4), {30}).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the call is computing
  kill(server.pid(), SIGTERM);
  int ready = 200;
  std::string reason;
  const auto end = Clock::now() + std::chrono::seconds(1);
  while (ready == 200 && Clock::now() < end) ready = HttpGet(admin, "/readyz", &reason);
  EXPECT_EQ(ready, 503);
  EXPECT_EQ(reason, "not ready: draining\n");
  EXPECT_EQ(HttpGet(admin, "/healthz"), 200);
  call.join();
  EXPECT_TRUE(slow.ok()) << slow;  // the drain let it finish
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

TEST(MetricsE2E, ABusyAdminPortRefusesStartUpWithOneLine) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string busy = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  ServerProcess server(Flags({"--admin-listen=" + busy}));
  close(fd);
  EXPECT_FALSE(server.ok());
  EXPECT_THAT(server.Output(),
              ::testing::HasSubstr("error: --admin-listen: cannot listen on " + busy));
}

}  // namespace
}  // namespace testing
}  // namespace attention
