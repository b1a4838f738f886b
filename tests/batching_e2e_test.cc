// End to end: dynamic batching (--batch-delay-us) on the real server. Many
// concurrent callers, unary and streams, get the answers an unbatched server
// gives them; deadlines apply to each request of a batch alone.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "client/client.h"
#include "core/tensor.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;

std::vector<std::string> BatchingFlags(const std::string& delay_us) {
  std::vector<std::string> flags = ModelFlags();
  for (const char* f : {"--batch-delay-us", delay_us.c_str(), "--admin-listen", "127.0.0.1:0"}) {
    flags.push_back(f);
  }
  return flags;
}

// The value of an unlabelled metric the server's admin endpoint exposes
// (-1 when it cannot be read).
double Metric(ServerProcess& server, const std::string& name) {
  static const std::regex kAdmin("admin endpoint on http://[^ ]*:([0-9]+) ");
  std::smatch port;
  const std::string out = server.Output();
  if (!std::regex_search(out, port, kAdmin)) return -1;
  httplib::Client http("127.0.0.1", std::stoi(port[1]));
  httplib::Result r = http.Get("/metrics");
  if (!r) return -1;
  std::istringstream lines(r->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::strtod(line.c_str() + name.size() + 1, nullptr);
  }
  return -1;
}

// A self-attention request for the demo model (E = 64), B rows of L = 3,
// float32 or float16 on the wire, with a key padding mask on odd seeds.
v1::SelfAttentionRequest DemoRequest(int seed, int64_t batch, double timeout_tag = 0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1, 1);
  std::vector<float> x(batch * 3 * 64);
  for (float& v : x) v = uniform(rng);
  v1::SelfAttentionRequest r;
  r.set_id("r" + std::to_string(seed) + (timeout_tag > 0 ? "-short" : ""));
  *r.mutable_input() = client::MakeTensor({batch, 3, 64}, x.data(),
                                          seed % 3 == 0 ? DType::kFloat16 : DType::kFloat32);
  r.mutable_options()->set_model("demo");
  if (seed % 2 == 1) {
    v1::Tensor* mask = r.mutable_options()->mutable_key_padding_mask();
    mask->set_dtype(v1::BOOL);
    mask->add_shape(batch);
    mask->add_shape(3);
    std::string bits(batch * 3, '\0');
    for (int64_t b = 0; b < batch; ++b) bits[b * 3 + 2] = 1;  // the last key ignored
    mask->set_data(bits);
  }
  return r;
}

// Max |got - want| over max |want|, both FLOAT32 or both FLOAT16 tensors of
// the same shape (a large number otherwise).
double Difference(const v1::Tensor& got, const v1::Tensor& want) {
  if (got.dtype() != want.dtype() || got.shape_size() != want.shape_size() ||
      !std::equal(got.shape().begin(), got.shape().end(), want.shape().begin()) ||
      got.data().size() != want.data().size()) {
    return 1e9;
  }
  const auto floats = [](const v1::Tensor& t) {
    std::vector<float> f;
    for (size_t i = 0; i < t.data().size(); i += t.dtype() == v1::FLOAT32 ? 4 : 2) {
      if (t.dtype() == v1::FLOAT32) {
        float v;
        std::memcpy(&v, t.data().data() + i, 4);
        f.push_back(v);
      } else {
        uint16_t h;
        std::memcpy(&h, t.data().data() + i, 2);
        f.push_back(HalfToFloat(h));
      }
    }
    return f;
  };
  const std::vector<float> g = floats(got), w = floats(want);
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < g.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(g[i] - w[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(w[i])));
  }
  return diff / scale;
}

// 16 callers (12 unary, 4 streams) send requests of 1 or 2 rows, float32 and
// float16, with and without a padding mask, all at once; every answer equals
// the unbatched server's, and batches did form.
TEST(Batching, ConcurrentCallersGetTheirUnbatchedAnswers) {
  ServerProcess batched(BatchingFlags("2000"));
  ServerProcess alone(ModelFlags());
  ASSERT_TRUE(batched.ok()) << batched.Output();
  ASSERT_TRUE(alone.ok()) << alone.Output();
  AttentionClient reference(AttentionClient::Connect(alone.target()));
  AttentionClient client(AttentionClient::Connect(batched.target()));
  constexpr int kCallers = 16, kCalls = 24;
  // A float16 output's rounding (1/1024 relative) may differ at a few
  // elements whose float32 values differ by float32 rounding only.
  constexpr double kFloat32Tolerance = 1e-4, kFloat16Tolerance = 2e-3;
  std::atomic<int> checked{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      std::vector<v1::SelfAttentionRequest> requests;
      for (int i = 0; i < kCalls; ++i) requests.push_back(DemoRequest(c * kCalls + i, 1 + i % 2));
      std::vector<v1::AttentionResponse> got;
      if (c % 4 == 3) {
        absl::StatusOr<std::vector<v1::AttentionResponse>> s = client.StreamSelfAttention(requests);
        ASSERT_TRUE(s.ok()) << s.status();
        got = std::move(*s);
      } else {
        for (const auto& r : requests) {
          absl::StatusOr<v1::AttentionResponse> s = client.SelfAttention(r, {30});
          ASSERT_TRUE(s.ok()) << s.status();
          got.push_back(std::move(*s));
        }
      }
      for (int i = 0; i < kCalls; ++i) {
        absl::StatusOr<v1::AttentionResponse> want = reference.SelfAttention(requests[i], {30});
        ASSERT_TRUE(want.ok()) << want.status();
        EXPECT_EQ(got[i].id(), requests[i].id());
        EXPECT_FALSE(got[i].has_error()) << got[i].error().message();
        const double tolerance =
            want->output().dtype() == v1::FLOAT32 ? kFloat32Tolerance : kFloat16Tolerance;
        EXPECT_LE(Difference(got[i].output(), want->output()), tolerance) << requests[i].id();
        ++checked;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(checked.load(), kCallers * kCalls);
  // Batches formed: fewer computations than requests.
  const double computations = Metric(batched, "attention_batch_size_count");
  const double requests = Metric(batched, "attention_batch_size_sum");
  EXPECT_EQ(requests, kCallers * kCalls);
  EXPECT_GT(computations, 0);
  EXPECT_LT(computations, requests * 0.8) << "requests were hardly batched";
  EXPECT_EQ(batched.Stop(SIGTERM, 15), 0) << batched.Output();
  EXPECT_EQ(alone.Stop(SIGTERM, 15), 0) << alone.Output();
}

// While compute is held by a slow request, batchable requests accumulate;
// those whose deadline passes meanwhile get DEADLINE_EXCEEDED, the others
// in the same batch are answered as usual.
TEST(Batching, DeadlinesApplyToEachRequestOfABatch) {
  // Unbatched computations take 400 ms.
  ServerProcess server(BatchingFlags("100"), FaultDelay(400));
  ServerProcess alone(ModelFlags());
  ASSERT_TRUE(server.ok()) << server.Output();
  ASSERT_TRUE(alone.ok()) << alone.Output();
  AttentionClient client(AttentionClient::Connect(server.target()));
  AttentionClient reference(AttentionClient::Connect(alone.target()));
  // An unbatched request ([L, E] input: never merged) holds the one worker.
  v1::SelfAttentionRequest slow = DemoRequest(0, 1);
  slow.mutable_input()->clear_shape();
  slow.mutable_input()->add_shape(3);
  slow.mutable_input()->add_shape(64);
  slow.mutable_options()->clear_key_padding_mask();
  std::thread holder([&] { EXPECT_TRUE(client.SelfAttention(slow, {30}).ok()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::vector<std::thread> callers;
  std::vector<absl::StatusOr<v1::AttentionResponse>> got(8, absl::UnknownError(""));
  for (int i = 0; i < 8; ++i) {
    callers.emplace_back([&, i] {
      got[i] = client.SelfAttention(DemoRequest(100 + i, 1, i % 2), {i % 2 == 1 ? 0.1 : 30});
    });
  }
  for (std::thread& t : callers) t.join();
  holder.join();
  for (int i = 0; i < 8; ++i) {
    if (i % 2 == 1) {
      EXPECT_EQ(got[i].status().code(), absl::StatusCode::kDeadlineExceeded) << got[i].status();
      continue;
    }
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    absl::StatusOr<v1::AttentionResponse> want =
        reference.SelfAttention(DemoRequest(100 + i, 1), {30});
    ASSERT_TRUE(want.ok());
    EXPECT_LE(Difference(got[i]->output(), want->output()), 2e-3);
  }
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
  EXPECT_EQ(alone.Stop(SIGTERM, 15), 0) << alone.Output();
}

}  // namespace
}  // namespace testing
}  // namespace attention
