// End to end: the real attention-server binary on 127.0.0.1, driven by the
// client library and the attention-client CLI.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "client/client.h"
#include "client/npy.h"
#include "core/model.h"
#include "core/reference.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "proto/reflection.grpc.pb.h"  // tests/proto, generated
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;
using ::testing::HasSubstr;

constexpr double kTolerance = 1e-4;

class E2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess(ModelFlags());
    ASSERT_TRUE(server_->ok()) << server_->Output();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->Stop(SIGTERM, 15), 0) << server_->Output();
    delete server_;
    server_ = nullptr;
  }
  AttentionClient Client() { return AttentionClient(AttentionClient::Connect(server_->target())); }

  static ServerProcess* server_;
};
ServerProcess* E2E::server_ = nullptr;

std::vector<std::unique_ptr<Fixture>> AllFixtures() {
  std::vector<std::unique_ptr<Fixture>> all;
  for (const std::string& path : FixturePaths()) {
    absl::StatusOr<std::unique_ptr<Fixture>> f = LoadFixture(path);
    EXPECT_TRUE(f.ok()) << f.status();
    if (f.ok()) all.push_back(std::move(*f));
  }
  return all;
}

void ExpectMatches(const Fixture& f, const v1::AttentionResponse& r, double tolerance) {
  SCOPED_TRACE(f.name);
  EXPECT_EQ(r.id(), f.name);
  EXPECT_FALSE(r.has_error()) << r.error().message();
  EXPECT_LE(ErrorAgainst(r.output(), *f.expected_output), tolerance);
  if (f.expected_weights != nullptr) {
    EXPECT_EQ(r.weights().dtype(), v1::FLOAT32);
    EXPECT_LE(ErrorAgainst(r.weights(), *f.expected_weights), tolerance);
  } else {
    EXPECT_FALSE(r.has_weights());
  }
}

TEST_F(E2E, HealthAndModels) {
  AttentionClient c = Client();
  EXPECT_EQ(*c.Health(), "SERVING");
  EXPECT_EQ(*c.Health("attention.v1.AttentionService"), "SERVING");
  absl::StatusOr<v1::ListModelsResponse> models = c.ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 3);
  EXPECT_EQ(models->models(0).name(), "demo");
  EXPECT_EQ(models->models(0).embed_dim(), 64);
  EXPECT_EQ(models->models(0).num_heads(), 4);
  EXPECT_EQ(models->models(2).name(), "mha_e32_h4");
  EXPECT_EQ(models->models(1).kdim(), 24);
  EXPECT_FALSE(models->models(1).bias());
  EXPECT_EQ(models->limits().max_message_bytes(), int64_t{256} << 20);
  EXPECT_GT(models->limits().compute_threads(), 0);
}

TEST_F(E2E, EveryPyTorchFixtureThroughUnaryCalls) {
  AttentionClient c = Client();
  int checked = 0;
  for (const auto& f : AllFixtures()) {
    absl::StatusOr<v1::AttentionResponse> r =
        f->args.self_attention ? c.SelfAttention(ToSelfAttentionRequest(*f), {30})
                               : c.Attention(ToAttentionRequest(*f), {30});
    ASSERT_TRUE(r.ok()) << f->name << ": " << r.status();
    ExpectMatches(*f, *r, kTolerance);
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

TEST_F(E2E, EveryPyTorchFixtureThroughStreams) {
  std::vector<v1::AttentionRequest> cross;
  std::vector<v1::SelfAttentionRequest> self;
  std::vector<std::unique_ptr<Fixture>> fixtures = AllFixtures();
  for (const auto& f : fixtures) {
    if (f->args.self_attention) {
      self.push_back(ToSelfAttentionRequest(*f));
    } else {
      cross.push_back(ToAttentionRequest(*f));
    }
  }
  AttentionClient c = Client();
  absl::StatusOr<std::vector<v1::AttentionResponse>> rc = c.StreamAttention(cross, 3, {60});
  absl::StatusOr<std::vector<v1::AttentionResponse>> rs = c.StreamSelfAttention(self, 3, {60});
  ASSERT_TRUE(rc.ok()) << rc.status();
  ASSERT_TRUE(rs.ok()) << rs.status();
  size_t ic = 0, is = 0;
  for (const auto& f : fixtures) {
    ExpectMatches(*f, f->args.self_attention ? (*rs)[is++] : (*rc)[ic++], kTolerance);
  }
}

TEST_F(E2E, StreamWithManyMessagesGoodAndBadAnswersEachInOrder) {
  absl::StatusOr<std::unique_ptr<const Model>> demo =
      LoadModel("demo", SourcePath("models/demo.safetensors"));
  ASSERT_TRUE(demo.ok());
  std::mt19937 rng(5);
  std::vector<FloatTensor> inputs;
  std::vector<v1::SelfAttentionRequest> requests;
  for (int i = 0; i < 60; ++i) {
    inputs.push_back(RandomTensor({1 + i % 3, 2 + i % 7, 64}, rng));
    v1::SelfAttentionRequest r;
    r.set_id("m" + std::to_string(i));
    *r.mutable_input() =
        client::MakeTensor(inputs.back().shape, inputs.back().data.data(), DType::kFloat32);
    r.mutable_options()->set_model("demo");
    if (i % 4 == 1 && i % 9 != 5) r.mutable_options()->set_num_heads(3);  // bad: model has 4
    if (i % 4 == 2) r.mutable_options()->set_weights(v1::WEIGHTS_AVERAGED);
    if (i % 9 == 5) r.mutable_input()->mutable_data()->resize(7);  // bad: byte length
    requests.push_back(std::move(r));
  }
  absl::StatusOr<std::vector<v1::AttentionResponse>> got =
      Client().StreamSelfAttention(requests, 8, {60});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), requests.size());
  int errors = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const v1::AttentionResponse& r = (*got)[i];
    EXPECT_EQ(r.id(), requests[i].id());
    if (i % 9 == 5) {
      EXPECT_EQ(r.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(r.error().message(), HasSubstr("input: data has 7 bytes"));
      ++errors;
      continue;
    }
    if (i % 4 == 1) {
      EXPECT_EQ(r.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(r.error().message(), HasSubstr("options.num_heads: 3 does not match"));
      ++errors;
      continue;
    }
    ASSERT_FALSE(r.has_error()) << r.error().message();
    AttentionArgs a;
    a.self_attention = true;
    a.query = inputs[i].view();
    a.num_heads = 4;
    a.projection = &(*demo)->weights();
    a.weights = i % 4 == 2 ? WeightsMode::kAveraged : WeightsMode::kNone;
    absl::StatusOr<ReferenceResult> want = ReferenceAttention(a);
    ASSERT_TRUE(want.ok());
    absl::StatusOr<FloatTensor> out = client::ToFloat(r.output(), "output");
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->shape, want->output_shape);
    EXPECT_LE(RelativeMaxError(out->data.data(), want->output), kTolerance);
    EXPECT_EQ(r.has_weights(), i % 4 == 2);
  }
  EXPECT_GT(errors, 10);
}

TEST_F(E2E, HalfAndBFloat16OnTheWire) {
  absl::StatusOr<std::unique_ptr<Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/e2e_demo_self_avg.safetensors"));
  ASSERT_TRUE(f.ok());
  AttentionClient c = Client();
  for (auto [dtype, tolerance] :
       {std::pair{DType::kFloat16, 5e-3}, std::pair{DType::kBFloat16, 3e-2}}) {
    absl::StatusOr<v1::AttentionResponse> r = c.SelfAttention(ToSelfAttentionRequest(**f, dtype));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->output().dtype(), convert::ToWire(dtype));
    EXPECT_EQ(r->output().data().size(), 2u * 10 * 64 * 2);
    EXPECT_LE(ErrorAgainst(r->output(), *(*f)->expected_output), tolerance);
    EXPECT_GT(ErrorAgainst(r->output(), *(*f)->expected_output), 0.0);  // really converted
    EXPECT_EQ(r->weights().dtype(), v1::FLOAT32);
    EXPECT_LE(ErrorAgainst(r->weights(), *(*f)->expected_weights), tolerance);
  }
}

TEST_F(E2E, ErrorStatusesNameTheFieldAndProblem) {
  AttentionClient c = Client();
  absl::StatusOr<std::unique_ptr<Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/sdpa_cross_none.safetensors"));
  ASSERT_TRUE(f.ok());
  v1::AttentionRequest bad = ToAttentionRequest(**f);
  bad.mutable_key()->set_shape(0, 3);
  absl::Status s = c.Attention(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("key: data has"));
  bad = ToAttentionRequest(**f);
  bad.mutable_options()->set_num_heads(0);
  s = c.Attention(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("options.num_heads: must be positive"));
  bad = ToAttentionRequest(**f);
  bad.mutable_options()->set_model("gpt5");
  s = c.Attention(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no model 'gpt5'"));
  bad.clear_query();
  EXPECT_THAT(std::string(c.Attention(bad).status().message()), HasSubstr("query: missing"));

  // 160 KiB of input asking for 6 GiB of per-head weights.
  std::vector<float> x(40000 * 1, 0.5f);
  v1::SelfAttentionRequest huge;
  *huge.mutable_input() = client::MakeTensor({1, 40000, 1}, x.data(), DType::kFloat32);
  huge.mutable_options()->set_num_heads(1);
  huge.mutable_options()->set_weights(v1::WEIGHTS_PER_HEAD);
  s = c.SelfAttention(huge).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("per-request memory limit"));
  // Overflowing shapes.
  huge.mutable_input()->set_shape(1, int64_t{1} << 62);
  s = c.SelfAttention(huge).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  huge.mutable_input()->set_shape(1, -40000);
  EXPECT_THAT(std::string(c.SelfAttention(huge).status().message()),
              HasSubstr("input: dimension 1"));
}

TEST_F(E2E, ReflectionListsTheServices) {
  using grpc::reflection::v1alpha::ServerReflection;
  using grpc::reflection::v1alpha::ServerReflectionRequest;
  using grpc::reflection::v1alpha::ServerReflectionResponse;
  auto stub = ServerReflection::NewStub(AttentionClient::Connect(server_->target()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&ctx);
  ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> names;
  for (const auto& s : response.list_services_response().service()) names.push_back(s.name());
  EXPECT_THAT(names,
              ::testing::IsSupersetOf({"attention.v1.AttentionService", "grpc.health.v1.Health"}));
  ServerReflectionRequest file;
  file.set_file_containing_symbol("attention.v1.AttentionService");
  ASSERT_TRUE(stream->Write(file));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_EQ(response.file_descriptor_response().file_descriptor_proto_size(), 1);
  EXPECT_THAT(response.file_descriptor_response().file_descriptor_proto(0),
              HasSubstr("attention/v1/attention.proto"));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST(E2EStreams, AClientThatStopsReadingIsNotBufferedWithoutBound) {
  std::vector<std::string> flags = {"--max-stream-in-flight=2"};
  ServerProcess server(flags);
  ASSERT_TRUE(server.ok()) << server.Output();
  auto stub = v1::AttentionService::NewStub(AttentionClient::Connect(server.target()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub->StreamSelfAttention(&ctx);
  std::vector<float> x(8 * 32768, 0.01f);  // 1 MiB a message, cheap to compute
  v1::SelfAttentionRequest request;
  *request.mutable_input() = client::MakeTensor({8, 32768}, x.data(), DType::kFloat32);
  request.mutable_options()->set_num_heads(1);
  constexpr int kMessages = 100;
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) {
      request.set_id(std::to_string(i));
      if (!stream->Write(request)) return;
      ++written;
    }
    stream->WritesDone();
  });
  std::this_thread::sleep_for(std::chrono::seconds(3));  // not reading
  const int before_reading = written.load();
  EXPECT_LT(before_reading, 50) << "the server kept reading a stream nobody reads";
  v1::AttentionResponse response;
  int read = 0;
  while (stream->Read(&response)) {
    EXPECT_EQ(response.id(), std::to_string(read));
    EXPECT_FALSE(response.has_error()) << response.error().message();
    ++read;
  }
  writer.join();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(read, kMessages);
  EXPECT_EQ(written.load(), kMessages);
}

// A small server, made deliberately slow with FaultDelay (test-only fault
// injection).
std::vector<std::string> SlowFlags(int queue) {
  std::vector<std::string> flags = ModelFlags();
  for (const std::string& f :
       {std::string("--workers=1"), std::string("--max-queue=") + std::to_string(queue),
        std::string("--max-message-mb=1"), std::string("--drain-seconds=5")}) {
    flags.push_back(f);
  }
  return flags;
}

v1::SelfAttentionRequest DemoRequest(int length) {
  std::vector<float> x(length * 64, 0.25f);
  v1::SelfAttentionRequest r;
  *r.mutable_input() = client::MakeTensor({1, length, 64}, x.data(), DType::kFloat32);
  r.mutable_options()->set_model("demo");
  return r;
}

TEST(E2ELimits, DeadlinesMessageSizeAndSaturation) {
  ServerProcess server(SlowFlags(2), FaultDelay(300));
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  EXPECT_EQ(c.SelfAttention(DemoRequest(4), {0.1}).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  absl::Status big = c.SelfAttention(DemoRequest(5000), {10}).status();  // 1.2 MiB > 1 MiB
  EXPECT_EQ(big.code(), absl::StatusCode::kResourceExhausted) << big;

  // Wait until the worker is idle again (the expired call still sleeps there).
  ASSERT_TRUE(c.SelfAttention(DemoRequest(4), {20}).ok());
  // 1 computing + 2 queued; the rest are refused at once. (A connection each:
  // one connection alone would meet its share of the queue first.)
  std::atomic<int> ok{0}, saturated{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      AttentionClient own(AttentionClient::ConnectAlone(server.target()));
      absl::Status s = own.SelfAttention(DemoRequest(4), {20}).status();
      if (s.ok()) {
        ++ok;
      } else if (s.code() == absl::StatusCode::kResourceExhausted &&
                 s.message().find("saturated") != absl::string_view::npos) {
        ++saturated;
      } else {
        ++other;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GE(ok.load(), 1);
  EXPECT_GE(saturated.load(), 1);  // at most 1 computing + 2 queued at any time
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok + saturated, 8);
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
}

TEST(E2ELimits, ACallWhoseDeadlinePassedInTheQueueIsNotComputed) {
  ServerProcess server(SlowFlags(8), FaultDelay(300));  // one worker; each computation takes 300 ms
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  ASSERT_TRUE(c.Health().ok());
  absl::Status first, expired;
  double last_ms = 0;
  std::thread a([&] { first = c.SelfAttention(DemoRequest(4), {10}).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::thread b([&] { expired = c.SelfAttention(DemoRequest(4), {0.1}).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status last = c.SelfAttention(DemoRequest(4), {10}).status();
  last_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  a.join();
  b.join();
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_EQ(expired.code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(last.ok()) << last;
  // The last call waited for the first (about 200 ms left) and its own 300 ms,
  // not for the expired one's 300 ms too.
  EXPECT_LT(last_ms, 750) << "the expired call was computed";
}

TEST(E2EShutdown, SigtermDrainsInFlightCallsAndExitsZero) {
  ServerProcess server(SlowFlags(32), FaultDelay(300));
  ASSERT_TRUE(server.ok()) << server.Output();
  auto channel = AttentionClient::Connect(server.target());
  AttentionClient c(channel);
  ASSERT_EQ(*c.Health(), "SERVING");

  // A health watcher sees NOT_SERVING when draining starts.
  std::atomic<bool> saw_not_serving{false};
  std::thread watcher([&] {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    grpc::health::v1::HealthCheckRequest req;
    auto reader = stub->Watch(&ctx, req);
    grpc::health::v1::HealthCheckResponse resp;
    while (reader->Read(&resp)) {
      if (resp.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
        saw_not_serving = true;
        ctx.TryCancel();
      }
    }
    reader->Finish();
  });

  std::atomic<int> ok{0}, unavailable{0}, other{0};
  auto tally = [&](const absl::Status& s) {
    if (s.ok()) {
      ++ok;
    } else if (s.code() == absl::StatusCode::kUnavailable) {
      ++unavailable;
    } else {
      ++other;
      std::fprintf(stderr, "unexpected: %s\n", s.ToString().c_str());
    }
  };
  std::vector<std::thread> calls;
  for (int i = 0; i < 6; ++i) {
    calls.emplace_back([&] { tally(c.SelfAttention(DemoRequest(8), {30}).status()); });
  }
  calls.emplace_back([&] {
    std::vector<v1::SelfAttentionRequest> msgs(4, DemoRequest(3));
    for (size_t i = 0; i < msgs.size(); ++i) msgs[i].set_id(std::to_string(i));
    absl::StatusOr<std::vector<v1::AttentionResponse>> r = c.StreamSelfAttention(msgs, 2, {30});
    tally(r.status());
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // calls are in flight
  const auto t0 = std::chrono::steady_clock::now();
  const int code = server.Stop(SIGTERM, 20);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (std::thread& t : calls) t.join();
  watcher.join();
  EXPECT_EQ(code, 0) << server.Output();
  EXPECT_LT(took, 10.0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok + unavailable, 7);
  EXPECT_GE(ok.load(), 1);  // the ones in flight finished
  EXPECT_TRUE(saw_not_serving.load());
  EXPECT_THAT(server.Output(), HasSubstr("draining"));
  // After exit nobody answers.
  EXPECT_EQ(c.Health("", {2}).status().code(), absl::StatusCode::kUnavailable);
}

// gRPC's Shutdown also waits for client connections to close: a client that
// keeps its channel open, idle, held the drain 4-5 s (or to the deadline, if
// sooner) before the server closed idle connections itself. Now ~0.1 s.
TEST(E2EShutdown, AnIdleClientConnectionDoesNotHoldTheDrain) {
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--drain-seconds=60");
  ServerProcess server(flags);
  ASSERT_TRUE(server.ok()) << server.Output();
  AttentionClient c(AttentionClient::Connect(server.target()));
  ASSERT_TRUE(c.SelfAttention(DemoRequest(4), {10}).ok());  // connected, now idle
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(server.Stop(SIGTERM, 90), 0) << server.Output();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 2.5);
}

TEST(E2EShutdown, StreamsCancelledMidFlightDoNotBlockShutdown) {
  std::vector<std::string> flags = SlowFlags(2);  // queue of 2: later messages are refused
  flags.push_back("--drain-seconds=60");
  ServerProcess server(flags, FaultDelay(50));
  ASSERT_TRUE(server.ok()) << server.Output();
  auto channel = AttentionClient::Connect(server.target());
  auto stub = v1::AttentionService::NewStub(channel);
  for (int round = 0; round < 5; ++round) {
    grpc::ClientContext ctx;
    auto stream = stub->StreamSelfAttention(&ctx);
    v1::SelfAttentionRequest r = DemoRequest(4);
    for (int i = 0; i < 6; ++i) {
      r.set_id(std::to_string(i));
      if (!stream->Write(r)) break;
    }
    v1::AttentionResponse response;
    stream->Read(&response);
    ctx.TryCancel();  // the client goes away with messages in flight
    stream->Finish();
  }
  std::vector<std::thread> unary;
  AttentionClient c(channel);
  std::atomic<int> answered{0};
  for (int i = 0; i < 4; ++i) {
    unary.emplace_back([&] {
      answered += c.SelfAttention(DemoRequest(4), {10}).status().code() !=
                  absl::StatusCode::kDeadlineExceeded;
    });
  }
  for (std::thread& t : unary) t.join();
  EXPECT_EQ(answered.load(), 4);  // OK or refused at once, none stuck behind dead streams
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(server.Stop(SIGTERM, 90), 0) << server.Output();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 2.5);  // neither dead streams nor the idle channel hold the drain
}

// A sidecar's client can reach the server over a unix socket.
TEST(E2EStartup, ServesOnAUnixSocket) {
  const std::string path =
      ::testing::TempDir() + "attention_e2e_" + std::to_string(getpid()) + ".sock";
  std::vector<std::string> flags = ModelFlags();
  flags.push_back("--listen=unix:" + path);
  ServerProcess server(flags);
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_EQ(server.target(), "unix:" + path);
  AttentionClient c(AttentionClient::Connect(server.target()));
  EXPECT_EQ(*c.Health("", {10}), "SERVING");
  EXPECT_TRUE(c.SelfAttention(DemoRequest(4), {10}).ok());
  EXPECT_EQ(server.Stop(SIGTERM, 15), 0) << server.Output();
  std::remove(path.c_str());
}

TEST(E2EStartup, BadModelOrBusyPortExitsNonZeroWithOneLine) {
  std::string out;
  EXPECT_EQ(RunCommand(
                {ServerBinary(), "--listen=127.0.0.1:0", "--model", "x=" + SourcePath("README.md")},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("attention-server: error: --model x="));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  // Sizes that would overflow once in bytes.
  EXPECT_EQ(
      RunCommand({ServerBinary(), "--listen=127.0.0.1:0", "--max-memory-mb=99999999999"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("attention-server: error: --max-memory-mb: must be at most "
                             "16777216, got 99999999999"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  // Each flag on its own: a bad value prints one line naming that flag.
  for (const auto& [flag, message] : std::vector<std::pair<std::string, std::string>>{
           {"--workers=0", "--workers: must be at least 1, got 0"},
           {"--drain-seconds=-1", "--drain-seconds: must be at least 0, got -1"},
           {"--max-queue=lots", "--max-queue: not an integer: 'lots'"},
           {"--no-such-flag=1", "unknown flag --no-such-flag"}}) {
    EXPECT_EQ(RunCommand({ServerBinary(), "--listen=127.0.0.1:0", flag}, &out), 1) << flag;
    EXPECT_THAT(out, HasSubstr("attention-server: error: " + message)) << flag;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  }

  ServerProcess first({});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(RunCommand({ServerBinary(), "--listen=" + first.target()}, &out), 1);
  EXPECT_THAT(out, HasSubstr("cannot listen on " + first.target()));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

// The CLI, as a user runs it.
class CliTest : public E2E {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("attention_cli_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Save(const std::string& name, const TensorView& v) {
    client::NpyArray a{v.dtype, v.shape,
                       std::string(static_cast<const char*>(v.data), v.byte_size)};
    std::string path = (dir_ / name).string();
    EXPECT_TRUE(client::WriteNpy(path, a).ok());
    return path;
  }
  std::string Path(const std::string& name) { return (dir_ / name).string(); }

  int Cli(std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(), {ClientBinary(), "--target", server_->target()});
    return RunCommand(args, out);
  }

  // .npy output against a fixture tensor.
  double NpyError(const std::string& path, const TensorView& want) {
    absl::StatusOr<client::NpyArray> a = client::ReadNpy(path);
    if (!a.ok()) return 1e9;
    v1::Tensor t;
    t.set_dtype(convert::ToWire(a->dtype));
    for (int64_t d : a->shape) t.add_shape(d);
    t.set_data(a->data);
    return ErrorAgainst(t, want);
  }

  std::filesystem::path dir_;
};

TEST_F(CliTest, SelfAttentionWithTheDemoModelMatchesPyTorch) {
  absl::StatusOr<std::unique_ptr<Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/e2e_demo_self_avg.safetensors"));
  ASSERT_TRUE(f.ok());
  const std::string x = Save("x.npy", (*f)->args.query);
  std::string out;
  ASSERT_EQ(Cli({"self-attention", "--input", x, "--model", "demo", "--weights", "average", "--out",
                 Path("o.npy"), "--weights-out", Path("w.npy")},
                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("output [2,10,64] FLOAT32"));
  EXPECT_LE(NpyError(Path("o.npy"), *(*f)->expected_output), kTolerance);
  EXPECT_LE(NpyError(Path("w.npy"), *(*f)->expected_weights), kTolerance);
}

TEST_F(CliTest, AttentionWithMasksHalfWireAndInlineProjection) {
  absl::StatusOr<std::unique_ptr<Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/e2e_mha_e32_h4_cross_perhead.safetensors"));
  ASSERT_TRUE(f.ok());
  const Fixture& fx = **f;
  const std::vector<std::string> inputs = {"--query",
                                           Save("q.npy", fx.args.query),
                                           "--key",
                                           Save("k.npy", *fx.args.key),
                                           "--value",
                                           Save("v.npy", *fx.args.value),
                                           "--key-padding-mask",
                                           Save("p.npy", *fx.args.key_padding_mask),
                                           "--weights",
                                           "per-head",
                                           "--weights-out",
                                           Path("w.npy")};
  std::string out;
  std::vector<std::string> with_model = {"attention", "--model", "mha_e32_h4", "--out",
                                         Path("o.npy")};
  with_model.insert(with_model.end(), inputs.begin(), inputs.end());
  ASSERT_EQ(Cli(with_model, &out), 0) << out;
  EXPECT_LE(NpyError(Path("o.npy"), *fx.expected_output), kTolerance);
  EXPECT_LE(NpyError(Path("w.npy"), *fx.expected_weights), kTolerance);

  std::vector<std::string> inline_half = {
      "attention",    "--projection", SourcePath("tests/fixtures/models/mha_e32_h4.safetensors"),
      "--wire-dtype", "float16",      "--out",
      Path("o16.npy")};
  inline_half.insert(inline_half.end(), inputs.begin(), inputs.end());
  ASSERT_EQ(Cli(inline_half, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("output [2,5,32] FLOAT16"));
  EXPECT_LE(NpyError(Path("o16.npy"), *fx.expected_output), 5e-3);
}

TEST_F(CliTest, FailuresPrintTheStatusAndExitNonZero) {
  std::string out;
  EXPECT_EQ(Cli({"health"}, &out), 0);
  EXPECT_EQ(out, "SERVING\n");
  EXPECT_EQ(Cli({"models"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("mha_e32_h2_kv"));
  std::vector<float> x(2 * 5 * 6, 1.0f);
  const std::string path =
      Save("x6.npy", TensorView{DType::kFloat32, {2, 5, 6}, x.data(), x.size() * 4});
  EXPECT_EQ(Cli({"self-attention", "--input", path, "--heads", "4"}, &out), 1);
  EXPECT_THAT(out,
              HasSubstr("INVALID_ARGUMENT: options.num_heads: 4 does not divide the input dim 6"));
  EXPECT_EQ(Cli({"self-attention", "--input", path, "--model", "nope"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND"));
  EXPECT_EQ(Cli({"self-attention", "--input", Path("missing.npy"), "--heads", "2"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("cannot open file"));
  EXPECT_EQ(Cli({"self-attention", "--input", path, "--weights", "some"}, &out), 2);  // usage
  EXPECT_THAT(out, HasSubstr("--weights some: expected none, average or per-head"));
  EXPECT_EQ(Cli({"frobnicate"}, &out), 2);
  std::string unreachable;
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", "127.0.0.1:1", "health", "--timeout", "2"},
                       &unreachable),
            1);
  EXPECT_THAT(unreachable, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace testing
}  // namespace attention
