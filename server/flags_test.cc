// The command line (server/flags.h) and the Server object (server/server.h)
// in process: every flag parses into its field, a bad value names its flag,
// and a Server starts on 127.0.0.1:0, serves, refuses bad options and drains.
#include "server/flags.h"

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server.h"

namespace attention {
namespace server {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<ServerOptions> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "attention-server");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseServerFlags(static_cast<int>(argv.size()), argv.data());
}

TEST(ServerFlags, EachFlagSetsItsField) {
  absl::StatusOr<ServerOptions> o =
      Parse({"--listen", "127.0.0.1:7", "--model", "a=x.safetensors", "--model=b=y,c=z",
             "--workers=2", "--max-memory-mb", "300", "--drain-seconds", "1.5",
             "--pin-threads=false", "--reflection", "--tls-cert", "c.pem", "--access-log", "-"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->listen, "127.0.0.1:7");
  EXPECT_THAT(o->model_specs, ::testing::ElementsAre("a=x.safetensors", "b=y", "c=z"));
  EXPECT_EQ(o->workers, 2);
  EXPECT_EQ(o->max_memory_mb, 300);
  EXPECT_EQ(o->drain_seconds, 1.5);
  EXPECT_FALSE(o->pin_threads);
  EXPECT_TRUE(o->reflection);
  EXPECT_EQ(o->security.tls_cert, "c.pem");
  EXPECT_EQ(o->access_log, "-");
  EXPECT_EQ(o->max_queue, ServerOptions().max_queue);  // untouched: the default
}

TEST(ServerFlags, ABadValueNamesItsFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--workers", "0"}, "--workers: must be at least 1, got 0"},
      {{"--max-queue=-1"}, "--max-queue: must be at least 0, got -1"},
      {{"--max-message-mb", "99999999"}, "--max-message-mb: must be at most 16777216"},
      {{"--threads", "two"}, "--threads: not an integer: 'two'"},
      {{"--drain-seconds", "nan"}, "--drain-seconds: not a number"},
      {{"--pin-threads=maybe"}, "--pin-threads: not true or false"},
      {{"--batch-max-size", "0"}, "--batch-max-size: must be at least 1"},
      {{"--min-client-ping-seconds", "2000000"}, "--min-client-ping-seconds: must be at most"},
      {{"--no-such-flag", "1"}, "unknown flag --no-such-flag"},
      {{"--listen"}, "--listen needs a value"},
      {{"stray"}, "unexpected argument 'stray'"},
  };
  for (const auto& [args, message] : cases) {
    absl::StatusOr<ServerOptions> o = Parse(args);
    ASSERT_FALSE(o.ok()) << args[0];
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(message));
  }
}

TEST(ServerFlags, HelpListsEveryFlagWithItsDefault) {
  const std::string help = ServerHelp();
  for (const char* flag : {"--listen HOST:PORT", "--model NAME=PATH", "--max-queue N",
                           "--pin-threads[=true|false]", "--tls-client-ca PATH"}) {
    EXPECT_THAT(help, HasSubstr(flag));
  }
  EXPECT_THAT(help, HasSubstr("(default 64)"));  // --max-queue, from ServerOptions
  EXPECT_THAT(help, HasSubstr("limits:\n"));
}

ServerOptions Local() {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.model_specs = {"demo=" + std::string(ATTENTION_SOURCE_DIR) + "/models/demo.safetensors"};
  o.threads = 1;
  o.drain_seconds = 1;
  return o;
}

TEST(ServerObject, ServesInProcessAndDrains) {
  Server server(Local());
  ASSERT_TRUE(server.Start().ok());
  EXPECT_THAT(server.Summary(), HasSubstr("listening on " + server.target()));
  auto channel = grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  auto stub = v1::AttentionService::NewStub(channel);
  v1::ListModelsResponse models;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "demo");
  server.Drain();
  grpc::ClientContext after;
  after.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  EXPECT_FALSE(stub->ListModels(&after, {}, &models).ok());
}

TEST(ServerObject, StartRefusesOptionsNamingTheFlag) {
  ServerOptions o = Local();
  o.workers = 0;
  Server bad(o);
  const absl::Status s = bad.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--workers"));

  Server first(Local());
  ASSERT_TRUE(first.Start().ok());
  o = Local();
  o.listen = first.target();  // in use
  Server second(o);
  EXPECT_THAT(std::string(second.Start().message()), HasSubstr("--listen: cannot listen on"));
}

}  // namespace
}  // namespace server
}  // namespace attention
