// The server inside a memory cgroup the test makes (a 1 GiB limit, as a
// container or a systemd unit with MemoryMax= gives it): outside a container
// the limit is a sub-path of the hierarchy, and the server must still see it.
#include "tests/cgroup.h"

#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "core/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMiB = int64_t{1} << 20;

// One flood: attention-client load's arguments.
struct Flood {
  const char* name;
  std::vector<std::string> load;
};

// The floods one client can send (issue: "under every flood one client can
// send"), each sized to press a 1 GiB server with default flags.
std::vector<Flood> Floods() {
  const std::vector<std::string> self = {"--rpc", "self-attention"};
  auto with = [&self](std::vector<std::string> more) {
    std::vector<std::string> all = self;
    all.insert(all.end(), more.begin(), more.end());
    return all;
  };
  return {
      // 48 uploads of 50 MiB at once over 4 connections: before the receive
      // gate, OOM-killed at 1 GiB (and 95% of the calls cut mid-upload).
      {"large uploads, many at once",
       with({"--batch", "100", "--seq", "128", "--embed", "1024", "--heads", "8", "--concurrency",
             "48", "--connections", "4", "--requests", "48"})},
      {"small uploads over many connections",
       with({"--batch", "1", "--seq", "64", "--embed", "256", "--heads", "4", "--concurrency",
             "200", "--connections", "50", "--requests", "2000"})},
      // 48 streams each sending a 50 MiB message at once: gRPC keeps a
      // stream's message coming while its read is pending, so these are not
      // gated as uploads are; before the read guard, killed at 1 GiB.
      {"streams of 50 MiB messages, many at once",
       with({"--batch", "100", "--seq", "128", "--embed", "1024", "--heads", "8", "--stream",
             "--in-flight", "1", "--concurrency", "48", "--connections", "4", "--requests", "96"})},
      {"streams of 4 MiB messages",
       with({"--batch", "16", "--seq", "128", "--embed", "512", "--heads", "8", "--stream",
             "--in-flight", "4", "--concurrency", "32", "--connections", "4", "--requests",
             "400"})},
      // 256 KiB in, 32 MiB of weights out each.
      {"per-head weights results",
       with({"--batch", "1", "--seq", "1024", "--embed", "64", "--heads", "8", "--weights",
             "per-head", "--concurrency", "32", "--connections", "8", "--requests", "200"})},
      // 256 StreamDecode sequences of the demo model, each prefilled with
      // 4096 tokens (1 MiB in, 2 MiB of keys and values held: 512 MiB in all,
      // past the budget), then 10 steps each (a stream's deadline covers
      // them all: longer than the others').
      {"decode caches",
       {"--rpc", "decode", "--model", "demo", "--context", "4096", "--sequences", "256", "--steps",
        "10", "--connections", "8", "--timeout", "180"}},
  };
}

// Process memory the kernel charged to the group at most, and what the server
// says its fixed part is (start line).
int64_t FixedPartBytes(const std::string& start_line) {
  const size_t at = start_line.find("fixed part ");
  if (at == std::string::npos) return -1;
  return std::stoll(start_line.substr(at + 11)) * kMiB;
}

TEST(Cgroup, TheServerSeesTheLimitOfItsOwnGroup) {
  absl::StatusOr<std::unique_ptr<MemoryCgroup>> group = MemoryCgroup::Create(int64_t{1} << 30);
  if (!group.ok()) GTEST_SKIP() << group.status();
  {
    ServerProcess server(ModelFlags(), {}, (*group)->dir());
    ASSERT_TRUE(server.ok()) << server.Output();
    const std::string file =
        (*group)->dir() + ((*group)->v2() ? "/memory.max" : "/memory.limit_in_bytes");
    EXPECT_THAT(server.Output(),
                HasSubstr("memory budget 614 MiB (60% of 1024 MiB: cgroup " +
                          std::string((*group)->v2() ? "v2 " : "v1 ") + file + ";"));
    client::AttentionClient c(client::AttentionClient::Connect(server.target()));
    EXPECT_EQ(*c.Health("", {10}), "SERVING");
    EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
  }
  EXPECT_EQ((*group)->OomKills(), 0);
  EXPECT_GT((*group)->PeakBytes(), 0);
}

// The server in a 1 GiB memory cgroup, default flags (a 614 MiB budget), and
// each flood in turn: never killed, within the budget plus its fixed part,
// serving after each, refusals only RESOURCE_EXHAUSTED, and some calls of
// each flood answered.
TEST(Cgroup, EveryFloodStaysWithinTheBudgetOfA1GiBServer) {
  // AddressSanitizer's quarantine and redzones hold freed memory on purpose,
  // and its build has no jemalloc: the bound is the Release build's.
  if (kAddressSanitizer) GTEST_SKIP() << "a memory bound; not under AddressSanitizer";
  absl::StatusOr<std::unique_ptr<MemoryCgroup>> group = MemoryCgroup::Create(int64_t{1} << 30);
  if (!group.ok()) GTEST_SKIP() << group.status();
  ServerProcess server({"--model", "demo=" + SourcePath("models/demo.safetensors")}, {},
                       (*group)->dir());
  ASSERT_TRUE(server.ok()) << server.Output();
  const std::string start = server.Output();
  ASSERT_THAT(start, HasSubstr("memory budget 614 MiB"));
  const int64_t fixed = FixedPartBytes(start);
  ASSERT_GT(fixed, 0) << start;
  client::AttentionClient c(client::AttentionClient::Connect(server.target()));
  const std::string report = ::testing::TempDir() + "/flood.json";
  for (const Flood& flood : Floods()) {
    SCOPED_TRACE(flood.name);
    std::vector<std::string> argv = {ClientBinary(), "--target",  server.target(),
                                     "load",         "--timeout", "60",
                                     "--quiet",      "--json",    report};
    argv.insert(argv.end(), flood.load.begin(), flood.load.end());  // its own flags win
    std::string out;
    const int code = RunCommand(argv, &out, 240);
    std::ifstream in(report);
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json result = nlohmann::json::parse(text.str(), nullptr, false);
    ASSERT_FALSE(result.is_discarded()) << code << ": " << out;
    const int64_t peak = (*group)->PeakBytes();
    std::printf("%s: %d ok, errors %s; peak %lld MiB (budget 614 + fixed %lld)\n", flood.name,
                result["ok"].get<int>(), result["errors"].dump().c_str(),
                static_cast<long long>(peak / kMiB), static_cast<long long>(fixed / kMiB));
    EXPECT_EQ((*group)->OomKills(), 0);
    ASSERT_EQ(kill(server.pid(), 0), 0) << "the server died: " << server.Output();
    EXPECT_GT(result["ok"].get<int>(), 0) << out;
    for (const auto& [status, count] : result["errors"].items()) {
      EXPECT_EQ(status, "RESOURCE_EXHAUSTED") << count << " calls: " << out;
    }
    // Decode sequences refused at their prefill are not in the report's
    // errors: the load tool prints a line for each.
    int refused_prefills = 0;
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      if (!absl::StrContains(line, "prefill failed")) continue;
      ++refused_prefills;
      EXPECT_THAT(line, HasSubstr("RESOURCE_EXHAUSTED"));
    }
    if (refused_prefills > 0) std::printf("  %d decode prefills refused\n", refused_prefills);
    EXPECT_LE(peak, 614 * kMiB + fixed);
    EXPECT_EQ(*c.Health("", {10}), "SERVING");
  }
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

}  // namespace
}  // namespace testing
}  // namespace attention
