#include "server/health_service.h"

#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"

namespace attention {
namespace server {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kService[] = "attention.v1.AttentionService";
constexpr absl::Duration kWait = absl::Seconds(10);

// A Watch stream read to its end: the statuses received and how it ended.
class Watcher final : public grpc::ClientReadReactor<HealthCheckResponse> {
 public:
  Watcher(Health::Stub* stub, const std::string& service) {
    request_.set_service(service);
    stub->async()->Watch(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }
  ~Watcher() override {
    context_.TryCancel();
    WaitDone(kWait);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    {
      absl::MutexLock lock(&mu_);
      statuses_.push_back(response_.status());
    }
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

  void Cancel() { context_.TryCancel(); }
  // Waits up to `timeout` for `n` statuses; the statuses received.
  std::vector<HealthCheckResponse::ServingStatus> WaitStatuses(size_t n,
                                                               absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return statuses_.size() >= n || done_; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
    return statuses_;
  }
  // Waits up to `timeout` for the stream to end; whether it has.
  bool WaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&done_), timeout);
  }
  // Valid once WaitDone said true.
  grpc::Status status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  grpc::ClientContext context_;
  HealthCheckRequest request_;
  HealthCheckResponse response_;
  absl::Mutex mu_;
  std::vector<HealthCheckResponse::ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

template <typename Done>
bool WaitFor(Done done, absl::Duration timeout = kWait) {
  const auto end = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(timeout);
  while (!done() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

class HealthServiceTest : public ::testing::Test {
 protected:
  void Start(HealthService::Options options = HealthService::Options()) {
    health_ = std::make_unique<HealthService>(std::vector<std::string>{kService}, options);
    // As server.cc did before: gRPC's default health service enabled for
    // every server. The builder option keeps it off this one, so that ours
    // is the grpc.health.v1.Health served (the default would answer SERVING
    // for "" at once, and watch without a limit).
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(health_.get());
    server_ = builder.BuildAndStart();
    grpc::EnableDefaultHealthCheckService(false);
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    EXPECT_EQ(server_->GetHealthCheckService(), nullptr);
    stub_ = Health::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                grpc::InsecureChannelCredentials()));
  }

  void TearDown() override { StopServer(); }

  // Shuts the health service and then the server down; how long the
  // server's Shutdown took.
  absl::Duration StopServer() {
    if (server_ == nullptr) return absl::ZeroDuration();
    health_->Shutdown();
    const absl::Time start = absl::Now();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(20));
    server_.reset();
    return absl::Now() - start;
  }

  // Check for `service`: its status, or the error's code.
  std::string Check(const std::string& service) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    const grpc::Status status = stub_->Check(&context, request, &response);
    if (!status.ok()) return "error " + std::to_string(status.error_code());
    return HealthCheckResponse::ServingStatus_Name(response.status());
  }

  std::unique_ptr<HealthService> health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Health::Stub> stub_;
};

TEST_F(HealthServiceTest, CheckAnswersForTheServerAndEachServiceNotForOthers) {
  Start();
  EXPECT_EQ(Check(""), "NOT_SERVING");  // until SetServing(true)
  EXPECT_EQ(Check(kService), "NOT_SERVING");
  health_->SetServing(true);
  EXPECT_EQ(Check(""), "SERVING");
  EXPECT_EQ(Check(kService), "SERVING");
  EXPECT_EQ(Check("no.such.Service"), "error " + std::to_string(grpc::StatusCode::NOT_FOUND));
  health_->SetServing(false);
  EXPECT_EQ(Check(""), "NOT_SERVING");
  EXPECT_EQ(Check(kService), "NOT_SERVING");
}

TEST_F(HealthServiceTest, WatchSendsTheStatusAtOnceAndThenEachChange) {
  Start();
  health_->SetServing(true);
  Watcher server(stub_.get(), "");
  Watcher service(stub_.get(), kService);
  Watcher unknown(stub_.get(), "no.such.Service");
  EXPECT_THAT(server.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  EXPECT_THAT(service.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  EXPECT_THAT(unknown.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVICE_UNKNOWN));
  EXPECT_TRUE(WaitFor([&] { return health_->watchers() == 3; })) << health_->watchers();

  health_->SetServing(false);
  EXPECT_THAT(server.WaitStatuses(2),
              ElementsAre(HealthCheckResponse::SERVING, HealthCheckResponse::NOT_SERVING));
  EXPECT_THAT(service.WaitStatuses(2),
              ElementsAre(HealthCheckResponse::SERVING, HealthCheckResponse::NOT_SERVING));
  health_->SetServing(false);  // no change: nothing sent
  health_->SetServing(true);
  EXPECT_THAT(server.WaitStatuses(3),
              ElementsAre(HealthCheckResponse::SERVING, HealthCheckResponse::NOT_SERVING,
                          HealthCheckResponse::SERVING));
  // An unknown name stays open and unknown.
  EXPECT_FALSE(unknown.WaitDone(absl::Milliseconds(200)));
  EXPECT_THAT(unknown.WaitStatuses(2, absl::Milliseconds(200)),
              ElementsAre(HealthCheckResponse::SERVICE_UNKNOWN));

  server.Cancel();
  ASSERT_TRUE(server.WaitDone(kWait));
  EXPECT_EQ(server.status().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return health_->watchers() == 2; })) << health_->watchers();
}

TEST_F(HealthServiceTest, WatchStreamsOverTheLimitAreRefusedUntilOneCloses) {
  HealthService::Options options;
  options.max_watchers = 3;
  Start(options);
  EXPECT_EQ(health_->max_watchers(), 3);
  health_->SetServing(true);
  std::vector<std::unique_ptr<Watcher>> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(std::make_unique<Watcher>(stub_.get(), i == 0 ? kService : ""));
    EXPECT_THAT(open.back()->WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  }
  EXPECT_EQ(health_->watchers(), 3);

  Watcher fourth(stub_.get(), "");
  ASSERT_TRUE(fourth.WaitDone(kWait));
  EXPECT_EQ(fourth.status().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(fourth.status().error_message(), "too many health Watch streams (3 open); use Check");
  EXPECT_THAT(fourth.WaitStatuses(1, absl::ZeroDuration()), ::testing::IsEmpty());
  EXPECT_EQ(Check(""), "SERVING");  // Check is not limited
  EXPECT_EQ(health_->watchers(), 3);

  open[1]->Cancel();
  ASSERT_TRUE(open[1]->WaitDone(kWait));
  ASSERT_TRUE(WaitFor([&] { return health_->watchers() == 2; })) << health_->watchers();
  Watcher fifth(stub_.get(), "");
  EXPECT_THAT(fifth.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  EXPECT_FALSE(fifth.WaitDone(absl::Milliseconds(100)));
  EXPECT_EQ(health_->watchers(), 3);
}

TEST_F(HealthServiceTest, AWatchForAHugeNameIsRefused) {
  Start();
  Watcher huge(stub_.get(), std::string(HealthService::kMaxWatchedNameBytes + 1, 'x'));
  ASSERT_TRUE(huge.WaitDone(kWait));
  EXPECT_EQ(huge.status().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  Watcher longest(stub_.get(), std::string(HealthService::kMaxWatchedNameBytes, 'x'));
  EXPECT_THAT(longest.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVICE_UNKNOWN));
}

TEST_F(HealthServiceTest, ShutdownEndsTheWatchStreams) {
  Start();
  health_->SetServing(true);
  Watcher a(stub_.get(), "");
  Watcher b(stub_.get(), kService);
  Watcher unknown(stub_.get(), "no.such.Service");
  ASSERT_THAT(a.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  ASSERT_THAT(b.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  ASSERT_THAT(unknown.WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVICE_UNKNOWN));

  // As the server's drain does: NOT_SERVING, then Shutdown at once. The
  // watchers are sent NOT_SERVING before their streams end.
  health_->SetServing(false);
  health_->Shutdown();
  for (Watcher* w : {&a, &b, &unknown}) {
    ASSERT_TRUE(w->WaitDone(absl::Seconds(5)));
    EXPECT_EQ(w->status().error_code(), grpc::StatusCode::CANCELLED) << w->status().error_message();
  }
  EXPECT_THAT(a.WaitStatuses(2),
              ElementsAre(HealthCheckResponse::SERVING, HealthCheckResponse::NOT_SERVING));
  EXPECT_THAT(b.WaitStatuses(2),
              ElementsAre(HealthCheckResponse::SERVING, HealthCheckResponse::NOT_SERVING));
  EXPECT_TRUE(WaitFor([&] { return health_->watchers() == 0; })) << health_->watchers();

  // A Watch after Shutdown gets the status and ends; Check still answers.
  Watcher late(stub_.get(), "");
  ASSERT_TRUE(late.WaitDone(absl::Seconds(5)));
  EXPECT_EQ(late.status().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_THAT(late.WaitStatuses(1), ElementsAre(HealthCheckResponse::NOT_SERVING));
  EXPECT_EQ(Check(""), "NOT_SERVING");
}

// The server's Shutdown is not held up by open Watch streams once the
// health service's Shutdown has ended them.
TEST_F(HealthServiceTest, ServerShutdownIsNotHeldUpByWatchStreams) {
  Start();
  health_->SetServing(true);
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < 20; ++i) {
    watchers.push_back(std::make_unique<Watcher>(stub_.get(), ""));
    ASSERT_THAT(watchers.back()->WaitStatuses(1), ElementsAre(HealthCheckResponse::SERVING));
  }
  health_->SetServing(false);
  EXPECT_LT(StopServer(), absl::Seconds(5));  // the deadline is 20 s
  for (auto& w : watchers) {
    ASSERT_TRUE(w->WaitDone(absl::Seconds(5)));
    // CANCELLED as the service finished it, or UNAVAILABLE when the server
    // closed the connection before the client read that (its socket reset).
    EXPECT_THAT(w->status().error_code(),
                ::testing::AnyOf(grpc::StatusCode::CANCELLED, grpc::StatusCode::UNAVAILABLE))
        << w->status().error_message();
  }
  EXPECT_EQ(health_->watchers(), 0);
}

// Status changes from several threads while streams open and close: each
// stream has one write in flight at a time, never sends the same status
// twice in a row, and ends with the last status set.
TEST_F(HealthServiceTest, ManyChangesReachEveryWatcherInOrder) {
  Start();
  health_->SetServing(true);
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < 8; ++i) watchers.push_back(std::make_unique<Watcher>(stub_.get(), kService));
  std::vector<std::thread> flippers;
  for (int t = 0; t < 3; ++t) {
    flippers.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) health_->SetServing((i + t) % 2 == 0);
    });
  }
  std::thread churn([&] {
    for (int i = 0; i < 50; ++i) {
      Watcher w(stub_.get(), "");
      w.WaitStatuses(1);
    }  // each cancelled by its destructor
  });
  for (std::thread& t : flippers) t.join();
  churn.join();
  health_->SetServing(false);
  health_->SetServing(true);
  for (auto& w : watchers) {
    ASSERT_TRUE(WaitFor([&] {
      std::vector<HealthCheckResponse::ServingStatus> s = w->WaitStatuses(1);
      return !s.empty() && s.back() == HealthCheckResponse::SERVING &&
             w->WaitStatuses(s.size() + 1, absl::Milliseconds(50)).size() == s.size();
    }));
    const std::vector<HealthCheckResponse::ServingStatus> s = w->WaitStatuses(1);
    for (size_t i = 1; i < s.size(); ++i) ASSERT_NE(s[i], s[i - 1]) << i;
  }
  EXPECT_TRUE(WaitFor([&] { return health_->watchers() == 8; })) << health_->watchers();
}

}  // namespace
}  // namespace server
}  // namespace attention
