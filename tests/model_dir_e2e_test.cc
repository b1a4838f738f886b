// --model-dir end to end, through a real server on 127.0.0.1: a model file
// replaced by a rename is served as a new version after SIGHUP or a poll,
// while callers keep calling (every answer computed wholly with one version:
// it equals bit for bit the old version's answer or the new one's, never a
// mix); a broken file and one over the memory budget leave the old version
// serving, counted in the metrics; a removed file unloads its model; a decode
// sequence keeps the version it started with.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "core/model.h"
#include "core/reference.h"
#include "core/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;
using client::MakeTensor;

constexpr int64_t kE = 64;

// Random nn.MultiheadAttention weights of E = kE, 4 heads, as a file's bytes.
std::string ModelBytes(uint32_t seed, int64_t embed = kE) {
  std::mt19937 rng(seed);
  const FloatTensor in = RandomTensor({3 * embed, embed}, rng, 0.2f);
  const FloatTensor out = RandomTensor({embed, embed}, rng, 0.2f);
  return SerializeSafetensors({{"in_proj_weight", in.view()}, {"out_proj.weight", out.view()}},
                              {{"num_heads", "4"}});
}

class ModelDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("attention_models_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `bytes` beside the directory's file and renames it into place, as
  // a deploy tool would.
  void Put(const std::string& name, const std::string& bytes) {
    const std::filesystem::path tmp = dir_ / (".tmp-" + name);
    std::ofstream(tmp, std::ios::binary) << bytes;
    std::filesystem::rename(tmp, dir_ / (name + ".safetensors"));
  }

  std::unique_ptr<ServerProcess> Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = {"--model-dir=" + dir_.string(), "--admin-listen=127.0.0.1:0"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    return std::make_unique<ServerProcess>(flags);
  }

  // The model's version as ListModels says (0 when not served).
  static int64_t Version(AttentionClient& c, const std::string& name) {
    absl::StatusOr<v1::ListModelsResponse> r = c.ListModels({5});
    if (!r.ok()) return -1;
    for (const auto& m : r->models()) {
      if (m.name() == name) return m.version();
    }
    return 0;
  }
  // Waits until `name` serves `version` (after a SIGHUP or a poll).
  static bool AwaitVersion(AttentionClient& c, const std::string& name, int64_t version) {
    for (int i = 0; i < 300; ++i) {
      if (Version(c, name) == version) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  static v1::SelfAttentionRequest Request(const std::vector<float>& x, const std::string& model) {
    v1::SelfAttentionRequest r;
    *r.mutable_input() = MakeTensor({1, 5, kE}, x.data(), DType::kFloat32);
    r.mutable_options()->set_model(model);
    return r;
  }
  static std::string Output(AttentionClient& c, const v1::SelfAttentionRequest& r) {
    absl::StatusOr<v1::AttentionResponse> resp = c.SelfAttention(r, {10});
    return resp.ok() ? resp->output().data() : "error: " + resp.status().ToString();
  }

  std::filesystem::path dir_;
};

TEST_F(ModelDir, AReplacedModelServesAsANewVersionAndNoCallMixesVersions) {
  Put("m", ModelBytes(1));
  std::unique_ptr<ServerProcess> server = Start({"--model-poll-seconds=0"});
  ASSERT_TRUE(server->ok()) << server->Output();
  AttentionClient c(AttentionClient::Connect(server->target()));
  EXPECT_EQ(Version(c, "m"), 1);
  std::mt19937 rng(9);
  const FloatTensor x = RandomTensor({5, kE}, rng);
  const v1::SelfAttentionRequest request = Request(x.data, "m");
  const std::string a = Output(c, request);
  ASSERT_EQ(a.size(), 5u * kE * 4) << a;
  // The answer equals the naive reference with the file's weights.
  {
    const std::filesystem::path copy = dir_ / ".check.safetensors";
    std::ofstream(copy, std::ios::binary) << ModelBytes(1);
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel("m", copy.string());
    ASSERT_TRUE(m.ok());
    AttentionArgs args;
    args.query = TensorView{DType::kFloat32, {1, 5, kE}, x.data.data(), x.data.size() * 4};
    args.self_attention = true;
    args.num_heads = 4;
    args.projection = &(*m)->weights();
    absl::StatusOr<ReferenceResult> want = ReferenceAttention(args);
    ASSERT_TRUE(want.ok());
    EXPECT_LE(RelativeMaxError(reinterpret_cast<const float*>(a.data()), want->output), 1e-4);
    std::filesystem::remove(copy);
  }
  Put("m", ModelBytes(2));
  ASSERT_EQ(kill(server->pid(), SIGHUP), 0);
  ASSERT_TRUE(AwaitVersion(c, "m", 2)) << server->Output();
  const std::string b = Output(c, request);
  ASSERT_EQ(b.size(), a.size());
  ASSERT_NE(a, b);
  // Callers calling while the file flips between the two weights: every
  // answer is the old one or the new one, whole; none fails.
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0}, mixed{0}, failed{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&] {
      AttentionClient mine(AttentionClient::Connect(server->target()));
      while (!stop) {
        const std::string got = Output(mine, request);
        ++calls;
        if (got.rfind("error", 0) == 0) {
          ++failed;
        } else if (got != a && got != b) {
          ++mixed;
        }
      }
    });
  }
  for (int flip = 0; flip < 6; ++flip) {
    Put("m", ModelBytes(flip % 2 == 0 ? 1 : 2));
    ASSERT_EQ(kill(server->pid(), SIGHUP), 0);
    ASSERT_TRUE(AwaitVersion(c, "m", 3 + flip)) << server->Output();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop = true;
  for (std::thread& t : callers) t.join();
  EXPECT_GT(calls.load(), 20);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(mixed.load(), 0);
  std::string text;
  ASSERT_EQ(HttpGet(AdminPort(*server), "/metrics", &text), 200);
  EXPECT_EQ(Sample(text, "attention_model_loads_total{model=\"m\",result=\"loaded\"}"), 7);
  EXPECT_EQ(Sample(text, "attention_model_info{model=\"m\",version=\"8\"}"), 1);
  EXPECT_EQ(text.find("attention_model_info{model=\"m\",version=\"7\"}"), std::string::npos);
  EXPECT_EQ(server->Stop(SIGTERM, 15), 0);
}

TEST_F(ModelDir, BrokenAndOverBudgetFilesLeaveTheOldVersionServing) {
  Put("m", ModelBytes(1));
  // --max-memory-mb 16: 12 MiB for requests being served; a model of E = 1024
  // (16 MiB, 32 MiB loaded) does not fit.
  std::unique_ptr<ServerProcess> server = Start({"--model-poll-seconds=0", "--max-memory-mb=16"});
  ASSERT_TRUE(server->ok()) << server->Output();
  AttentionClient c(AttentionClient::Connect(server->target()));
  std::mt19937 rng(3);
  const FloatTensor x = RandomTensor({5, kE}, rng);
  const std::string before = Output(c, Request(x.data, "m"));
  ASSERT_EQ(before.size(), 5u * kE * 4) << before;
  std::string bytes = ModelBytes(2);
  bytes.resize(bytes.size() / 2);  // a file cut short (a copy that was interrupted)
  Put("m", bytes);
  ASSERT_EQ(kill(server->pid(), SIGHUP), 0);
  Put("big", ModelBytes(3, 1024));
  ASSERT_EQ(kill(server->pid(), SIGHUP), 0);
  std::string text;
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(HttpGet(AdminPort(*server), "/metrics", &text), 200);
    if (Sample(text, "attention_model_loads_total{model=\"big\",result=\"over_budget\"}") == 1)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(Sample(text, "attention_model_loads_total{model=\"m\",result=\"error\"}"), 1);
  EXPECT_EQ(Sample(text, "attention_model_loads_total{model=\"big\",result=\"over_budget\"}"), 1);
  EXPECT_EQ(Version(c, "m"), 1);
  EXPECT_EQ(Version(c, "big"), 0);
  EXPECT_EQ(Output(c, Request(x.data, "m")), before);  // the old version serves on
  EXPECT_THAT(server->Output(), ::testing::HasSubstr("m.safetensors"));
  EXPECT_THAT(server->Output(), ::testing::HasSubstr("version 1 keeps serving"));
  // Fixed: the next check loads it.
  Put("m", ModelBytes(2));
  ASSERT_EQ(kill(server->pid(), SIGHUP), 0);
  EXPECT_TRUE(AwaitVersion(c, "m", 2)) << server->Output();
  EXPECT_EQ(server->Stop(SIGTERM, 15), 0);
}

TEST_F(ModelDir, PollingFindsNewAndRemovedModels) {
  std::unique_ptr<ServerProcess> server = Start({"--model-poll-seconds=1"});
  ASSERT_TRUE(server->ok()) << server->Output();
  AttentionClient c(AttentionClient::Connect(server->target()));
  std::mt19937 rng(4);
  const FloatTensor x = RandomTensor({5, kE}, rng);
  EXPECT_EQ(Version(c, "late"), 0);
  Put("late", ModelBytes(5));
  ASSERT_TRUE(AwaitVersion(c, "late", 1)) << server->Output();
  EXPECT_EQ(Output(c, Request(x.data, "late")).size(), 5u * kE * 4);
  std::filesystem::remove(dir_ / "late.safetensors");
  ASSERT_TRUE(AwaitVersion(c, "late", 0)) << server->Output();
  EXPECT_THAT(Output(c, Request(x.data, "late")),
              ::testing::HasSubstr("NOT_FOUND: options.model: no model 'late'"));
  EXPECT_EQ(server->Stop(SIGTERM, 15), 0);
}

TEST_F(ModelDir, ADecodeSequenceKeepsTheVersionItStartedWith) {
  Put("m", ModelBytes(1));
  std::unique_ptr<ServerProcess> server = Start({"--model-poll-seconds=0"});
  ASSERT_TRUE(server->ok()) << server->Output();
  AttentionClient c(AttentionClient::Connect(server->target()));
  std::mt19937 rng(6);
  const FloatTensor x = RandomTensor({8, kE}, rng);
  auto step = [&](client::DecodeStream& s, const std::string& seq, int64_t first, int64_t n) {
    v1::DecodeRequest r;
    r.set_sequence(seq);
    *r.mutable_input() = MakeTensor({n, kE}, x.data.data() + first * kE, DType::kFloat32);
    r.mutable_options()->set_model("m");
    r.mutable_options()->set_causal(true);
    absl::StatusOr<v1::AttentionResponse> resp = s.Append(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->output().data() : std::string();
  };
  // The whole causal forward with each version, for comparison.
  auto whole = [&](const std::string& model) {
    v1::SelfAttentionRequest r;
    *r.mutable_input() = MakeTensor({1, 8, kE}, x.data.data(), DType::kFloat32);
    r.mutable_options()->set_model(model);
    r.mutable_options()->set_causal(true);
    absl::StatusOr<v1::AttentionResponse> resp = c.SelfAttention(r, {10});
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? absl::StatusOr<FloatTensor>(client::ToFloat(resp->output(), "o"))->data
                     : std::vector<float>{};
  };
  const std::vector<float> old_whole = whole("m");
  client::DecodeStream stream(&c);
  std::string got = step(stream, "s", 0, 4);
  Put("m", ModelBytes(2));
  ASSERT_EQ(kill(server->pid(), SIGHUP), 0);
  ASSERT_TRUE(AwaitVersion(c, "m", 2)) << server->Output();
  for (int64_t t = 4; t < 8; ++t) got += step(stream, "s", t, 1);  // names "m" again
  const std::vector<float> new_whole = whole("m");
  ASSERT_EQ(got.size(), old_whole.size() * 4);
  const auto* g = reinterpret_cast<const float*>(got.data());
  double old_error = 0, new_error = 0;
  for (size_t i = 0; i < old_whole.size(); ++i) {
    old_error = std::max(old_error, static_cast<double>(std::abs(g[i] - old_whole[i])));
    new_error = std::max(new_error, static_cast<double>(std::abs(g[i] - new_whole[i])));
  }
  EXPECT_LT(old_error, 1e-4);  // the sequence's version throughout
  EXPECT_GT(new_error, 1e-2);
  // A new sequence starts on the new version.
  const std::string fresh = step(stream, "t", 0, 8);
  const auto* f = reinterpret_cast<const float*>(fresh.data());
  EXPECT_NEAR(f[8 * kE - 1], new_whole[8 * kE - 1], 1e-4);
  EXPECT_TRUE(stream.Close().ok());
  EXPECT_EQ(server->Stop(SIGTERM, 15), 0);
}

}  // namespace
}  // namespace testing
}  // namespace attention
