// attention-client load against a real server on 127.0.0.1: counts balance in
// every mode, --verify catches a wrong reference, and open-loop latency is
// corrected for coordinated omission when the server stalls; a gone server
// fails each request once, its retries counted apart; stalled streams are
// cancelled; bad flag values of the load tool and of attention-bench are
// usage errors.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "core/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using ::testing::HasSubstr;

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("attention_load_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs `attention-client --target T load ARGS --json F`; returns the exit code.
  int Load(const ServerProcess& server, std::vector<std::string> args, nlohmann::json* json,
           std::string* out) {
    const std::string path = (dir_ / "r.json").string();
    std::filesystem::remove(path);
    args.insert(args.begin(),
                {ClientBinary(), "--target", server.target(), "load", "--quiet", "--json", path});
    const int code = RunCommand(args, out, 120);
    std::ifstream in(path);
    if (in) *json = nlohmann::json::parse(in, nullptr, false);
    return code;
  }

  static void ExpectBalanced(const nlohmann::json& r) {
    int64_t errors = 0;
    for (const auto& [code, n] : r["errors"].items()) errors += n.get<int64_t>();
    EXPECT_GT(r["sent"].get<int64_t>(), 0);
    EXPECT_EQ(r["sent"].get<int64_t>(), r["ok"].get<int64_t>() + errors) << r.dump();
    EXPECT_EQ(r["lost"].get<int64_t>(), 0);
  }

  std::filesystem::path dir_;
};

TEST_F(LoadTest, CountsBalanceInClosedOpenAndStreamModes) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  nlohmann::json r;
  std::string out;
  ASSERT_EQ(Load(server,
                 {"--rpc", "self-attention", "--model", "demo", "--concurrency", "1,3",
                  "--requests", "60", "--warmup", "0", "--verify", "20", "--model-file",
                  SourcePath("models/demo.safetensors")},
                 &r, &out),
            0)
      << out;
  ASSERT_TRUE(r.is_array()) << out;
  ASSERT_EQ(r.size(), 2u);
  for (const auto& level : r) {
    ExpectBalanced(level);
    EXPECT_EQ(level["ok"], 60);
    EXPECT_EQ(level["verify"]["checked"], 12);
    EXPECT_EQ(level["verify"]["mismatches"], 0);
    EXPECT_GT(level["latency_ms"]["p99"].get<double>(), 0);
  }
  ASSERT_EQ(Load(server, {"--rpc",  "attention", "--heads",   "4",        "--embed",
                          "32",     "--seq",     "8",         "--kv-seq", "12",
                          "--rate", "200",       "--arrival", "poisson",  "--duration",
                          "1",      "--warmup",  "0.2",       "--verify", "50"},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_GT(r["verify"]["checked"].get<int64_t>(), 10);
  EXPECT_EQ(r["verify"]["mismatches"], 0);
  EXPECT_TRUE(r.contains("corrected_latency_ms"));
  EXPECT_TRUE(r.contains("behind_schedule"));
  // Streams, with bad messages mixed in (num_heads 3 does not divide 64).
  ASSERT_EQ(Load(server,
                 {"--rpc", "self-attention", "--heads", "3", "--embed", "64", "--stream",
                  "--concurrency", "2", "--in-flight", "3", "--requests", "50", "--warmup", "0"},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["errors"]["INVALID_ARGUMENT"], 50);
  EXPECT_THAT(r["first_errors"]["INVALID_ARGUMENT"].get<std::string>(),
              HasSubstr("options.num_heads"));
  ASSERT_EQ(Load(server,
                 {"--model", "demo", "--stream", "--concurrency", "3", "--requests", "90",
                  "--warmup", "0", "--weights", "average", "--verify", "100", "--model-file",
                  SourcePath("models/demo.safetensors")},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["ok"], 90);
  EXPECT_EQ(r["verify"]["checked"], 90);
  // Health: the gRPC stack alone.
  ASSERT_EQ(
      Load(server, {"--rpc", "health", "--concurrency", "2", "--requests", "200", "--warmup", "0"},
           &r, &out),
      0)
      << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["ok"], 200);
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
}

TEST_F(LoadTest, AGoneServerFailsEachRequestOnceAndRetriesAreCountedApart) {
  // A server that has gone: every attempt ends UNAVAILABLE at once.
  ServerProcess gone({});
  ASSERT_TRUE(gone.ok()) << gone.Output();
  EXPECT_EQ(gone.Stop(SIGTERM, 15), 0);
  nlohmann::json r;
  std::string out;
  for (const std::vector<std::string>& loop :
       {std::vector<std::string>{"--rpc", "health", "--concurrency", "3", "--retries", "2"},
        std::vector<std::string>{"--rpc", "health", "--rate", "200", "--retries", "2"},
        std::vector<std::string>{"--embed", "8", "--heads", "2", "--seq", "2", "--stream",
                                 "--concurrency", "3"}}) {
    std::vector<std::string> args = {"--requests", "12", "--warmup", "0", "--timeout", "10"};
    args.insert(args.end(), loop.begin(), loop.end());
    ASSERT_EQ(Load(gone, args, &r, &out), 0) << out;
    ExpectBalanced(r);
    EXPECT_EQ(r["sent"], 12) << out;
    EXPECT_EQ(r["errors"]["UNAVAILABLE"], 12) << out;
    EXPECT_EQ(r["retries"], args.back() == "2" ? 24 : 0) << out;
  }
}

TEST_F(LoadTest, StreamsWhoseAnswersStallAreCancelledAfterTheTimeout) {
  ServerProcess server(ModelFlags(), FaultDelay(400));
  ASSERT_TRUE(server.ok()) << server.Output();
  nlohmann::json r;
  std::string out;
  ASSERT_EQ(Load(server,
                 {"--model", "demo", "--seq", "2", "--stream", "--concurrency", "2", "--in-flight",
                  "2", "--requests", "8", "--warmup", "0", "--timeout", "0.1"},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["errors"]["DEADLINE_EXCEEDED"], 8) << out;
  EXPECT_THAT(r["first_errors"]["DEADLINE_EXCEEDED"].get<std::string>(),
              HasSubstr("no stream response within --timeout"));
}

TEST_F(LoadTest, VerifyFailsAgainstAWrongReference) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  // A model with demo's shape but other weights: a deliberately wrong reference.
  std::mt19937 rng(3);
  FloatTensor in = RandomTensor({192, 64}, rng, 0.1f), out_w = RandomTensor({64, 64}, rng, 0.1f);
  const std::string wrong = (dir_ / "wrong.safetensors").string();
  std::ofstream(wrong, std::ios::binary) << SerializeSafetensors(
      {{"in_proj_weight", in.view()}, {"out_proj.weight", out_w.view()}}, {{"num_heads", "4"}});
  nlohmann::json r;
  std::string out;
  EXPECT_EQ(Load(server,
                 {"--model", "demo", "--concurrency", "2", "--requests", "40", "--warmup", "0",
                  "--verify", "25", "--model-file", wrong},
                 &r, &out),
            1)
      << out;
  EXPECT_EQ(r["verify"]["checked"], 10);
  EXPECT_EQ(r["verify"]["mismatches"], 10);
  EXPECT_THAT(r["verify"]["first_mismatch"].get<std::string>(),
              HasSubstr("differs from the reference"));
  EXPECT_THAT(out, HasSubstr("10 mismatches"));
}

// --rpc model-infer: the self-attention pool over the Open Inference
// Protocol's ModelInfer, every answer counted once and checked; a refused
// request is one error with its code.
TEST_F(LoadTest, ModelInferBalancesAndIsVerified) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  nlohmann::json r;
  std::string out;
  ASSERT_EQ(Load(server,
                 {"--rpc", "model-infer", "--model", "demo", "--causal", "--weights", "average",
                  "--concurrency", "2", "--requests", "60", "--warmup", "0", "--verify", "100",
                  "--model-file", SourcePath("models/demo.safetensors")},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["ok"], 60);
  EXPECT_EQ(r["verify"]["checked"], 60);
  EXPECT_EQ(r["verify"]["mismatches"], 0);
  ASSERT_EQ(Load(server,
                 {"--rpc", "model-infer", "--heads", "4", "--embed", "32", "--seq", "8", "--rate",
                  "100", "--duration", "1", "--warmup", "0", "--verify", "50"},
                 &r, &out),
            0)
      << out;  // the built-in model
  ExpectBalanced(r);
  EXPECT_GT(r["verify"]["checked"].get<int64_t>(), 20);
  EXPECT_EQ(r["verify"]["mismatches"], 0);
  ASSERT_EQ(Load(server,
                 {"--rpc", "model-infer", "--model", "demo", "--embed", "32", "--requests", "10",
                  "--warmup", "0"},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["errors"]["INVALID_ARGUMENT"], 10);
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
}

// --rpc decode: every step counted once and checked against the reference
// of the causal forward; a wrong model's reference fails them; flags that do
// not apply are usage errors.
TEST_F(LoadTest, DecodeStepsBalanceAndAreVerified) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  nlohmann::json r;
  std::string out;
  const std::vector<std::string> decode = {
      "--rpc", "decode", "--model", "demo", "--context", "20", "--steps", "15", "--sequences", "5"};
  std::vector<std::string> args = decode;
  args.insert(args.end(),
              {"--verify", "100", "--model-file", SourcePath("models/demo.safetensors")});
  ASSERT_EQ(Load(server, args, &r, &out), 0) << out;
  ExpectBalanced(r);
  EXPECT_EQ(r["sent"], 75);
  EXPECT_EQ(r["ok"], 75);
  EXPECT_EQ(r["verify"]["checked"], 75);
  EXPECT_EQ(r["verify"]["mismatches"], 0);
  EXPECT_EQ(r["concurrency"], 5);
  std::mt19937 rng(3);
  FloatTensor in = RandomTensor({192, 64}, rng, 0.1f), out_w = RandomTensor({64, 64}, rng, 0.1f);
  const std::string wrong = (dir_ / "wrong.safetensors").string();
  std::ofstream(wrong, std::ios::binary) << SerializeSafetensors(
      {{"in_proj_weight", in.view()}, {"out_proj.weight", out_w.view()}}, {{"num_heads", "4"}});
  args = decode;
  args.insert(args.end(), {"--verify", "20", "--model-file", wrong});
  EXPECT_EQ(Load(server, args, &r, &out), 1) << out;
  EXPECT_EQ(r["verify"]["checked"], 15);
  EXPECT_EQ(r["verify"]["mismatches"], 15);
  for (const char* extra : {"--concurrency", "--requests", "--duration"}) {
    args = decode;
    args.insert(args.end(), {extra, "2"});
    EXPECT_EQ(Load(server, args, &r, &out), 2) << extra << ": " << out;
    EXPECT_THAT(out, HasSubstr("--rpc decode runs --sequences closed loops"));
  }
  EXPECT_EQ(Load(server, {"--rpc", "self-attention", "--steps", "3"}, &r, &out), 2) << out;
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
}

// --rpc decode --retries through replicas killed mid-decode: no failed step,
// every step still equal to the reference, the reopenings counted apart.
TEST_F(LoadTest, DecodeSurvivesAKilledReplicaWithRetries) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> targets;
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--admin-listen=127.0.0.1:0");
  for (int i = 0; i < 2; ++i) {
    servers.push_back(std::make_unique<ServerProcess>(flags));
    ASSERT_TRUE(servers.back()->ok()) << servers.back()->Output();
    targets.push_back(servers.back()->target());
  }
  const std::string path = (dir_ / "r.json").string();
  std::string out;
  std::thread killer([&] {  // once the first replica holds sequences, and a little after
    const int admin = AdminPort(*servers[0]);
    for (int i = 0; i < 3000; ++i) {
      std::string text;
      if (HttpGet(admin, "/metrics", &text) == 200 &&
          Sample(text, "attention_decode_sequences") > 0) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    servers[0]->Stop(SIGKILL, 5);
  });
  const int code = RunCommand({ClientBinary(),
                               "--target",
                               targets[0] + "," + targets[1],
                               "load",
                               "--quiet",
                               "--json",
                               path,
                               "--rpc",
                               "decode",
                               "--model",
                               "demo",
                               "--context",
                               "30",
                               "--steps",
                               "2000",
                               "--sequences",
                               "4",
                               "--retries",
                               "5",
                               "--verify",
                               "10",
                               "--model-file",
                               SourcePath("models/demo.safetensors")},
                              &out, 120);
  killer.join();
  ASSERT_EQ(code, 0) << out;
  std::ifstream in(path);
  const nlohmann::json r = nlohmann::json::parse(in, nullptr, false);
  ExpectBalanced(r);
  EXPECT_EQ(r["ok"], 8000);
  EXPECT_EQ(r["verify"]["mismatches"], 0);
  EXPECT_GT(r["retries"].get<int64_t>(), 0) << "the killed replica held no stream";
}

TEST_F(LoadTest, OpenLoopCorrectsForAStalledServer) {
  // Every computation stalls 40 ms (test-only fault injection) and the client
  // may keep one request outstanding: it falls behind its 50/s schedule.
  std::vector<std::string> flags = ModelFlags();
  ServerProcess server(flags, FaultDelay(40));
  ASSERT_TRUE(server.ok()) << server.Output();
  nlohmann::json r;
  std::string out;
  ASSERT_EQ(Load(server,
                 {"--model", "demo", "--rate", "50", "--duration", "1.5", "--warmup", "0",
                  "--max-outstanding", "1"},
                 &r, &out),
            0)
      << out;
  ExpectBalanced(r);
  EXPECT_GT(r["behind_schedule"].get<int64_t>(), 10);
  const double corrected = r["corrected_latency_ms"]["p99"], plain = r["latency_ms"]["p99"];
  EXPECT_GT(corrected, 2 * plain) << out;
  EXPECT_GE(plain, 40.0);
}

TEST_F(LoadTest, ReportsAreWritten) {
  ServerProcess server(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  const std::string html = (dir_ / "r.html").string(), csv = (dir_ / "r.csv").string();
  std::string out;
  ASSERT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "load", "--quiet", "--model",
                        "demo", "--rate", "100,200", "--duration", "0.5", "--warmup", "0", "--html",
                        html, "--csv", csv},
                       &out),
            0)
      << out;
  std::stringstream page, table;
  page << std::ifstream(html).rdbuf();
  table << std::ifstream(csv).rdbuf();
  EXPECT_THAT(page.str(), HasSubstr("<svg"));
  EXPECT_THAT(page.str(), HasSubstr("rate 200/s corrected"));
  EXPECT_THAT(page.str(), ::testing::Not(HasSubstr("http://cdn")));
  const std::string csv_text = table.str();
  EXPECT_EQ(std::count(csv_text.begin(), csv_text.end(), '\n'), 3);  // header + 2 levels
  EXPECT_THAT(csv_text, HasSubstr(",checked,mismatches,retries\n"));
  EXPECT_THAT(out, HasSubstr("rate 100/s"));
  std::string bad;
  EXPECT_EQ(RunCommand({ClientBinary(), "load", "--rate", "10", "--concurrency", "2"}, &bad), 2);
  EXPECT_THAT(bad, HasSubstr("not both"));
}

// A flag, a bad value and the message it must draw.
struct BadFlag {
  std::string flag, value, message;
};

// Runs `command` with each bad flag appended: a usage error (exit 2) whose
// message names the flag, before any call.
void ExpectUsageErrors(const std::vector<std::string>& command, const std::vector<BadFlag>& bad) {
  for (const BadFlag& b : bad) {
    std::vector<std::string> argv = command;
    argv.insert(argv.end(), {b.flag, b.value});
    std::string out;
    EXPECT_EQ(RunCommand(argv, &out), 2) << b.flag << " " << out;
    EXPECT_THAT(out, HasSubstr(b.message));
  }
}

// Every tool parses --weights, --wire-dtype and --rpc the same way.
TEST_F(LoadTest, BadFlagValuesAreRejected) {
  ExpectUsageErrors(
      {ClientBinary(), "--target", "127.0.0.1:1", "load", "--quiet", "--duration", "1", "--warmup",
       "0"},
      {{"--weights", "avarage", "--weights avarage: expected none, average or per-head"},
       {"--wire-dtype", "float64", "--wire-dtype float64: expected float32, float16 or bfloat16"},
       {"--rpc", "selfattention",
        "--rpc selfattention: expected attention, self-attention, health, decode or model-infer"},
       {"--anything", "3", "unknown option --anything"}});
}

TEST_F(LoadTest, BenchRejectsUnknownFlagsAndBadValues) {
  const std::vector<std::string> bench = {
      ATTENTION_BENCH_BIN, "--seq", "4", "--embed", "8", "--heads", "2", "--min-time", "0"};
  ExpectUsageErrors(
      bench, {{"--anything", "3", "unknown option --anything"},
              {"--weights", "avarage", "--weights avarage: expected none, average or per-head"},
              {"--threads", "two", "--threads two: not an integer"},
              {"--min-time", "1s", "--min-time 1s: not a number"},
              {"--fused-min-keys", "x", "--fused-min-keys x: not an integer"}});
  std::string out;  // the same case with good flags runs
  EXPECT_EQ(RunCommand(bench, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("in-process"));
}

}  // namespace
}  // namespace testing
}  // namespace attention
