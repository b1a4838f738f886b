// End to end: TLS, mutual TLS and bearer tokens on the real attention-server,
// with certificates made at test time by scripts/make-certs.sh (openssl).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/reflection.grpc.pb.h"  // tests/proto, generated
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;
using client::ChannelSecurity;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "s3cret-token-for-tests";

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::filesystem::path& path, const std::string& text) {
  // Written beside and renamed over, as Kubernetes updates a mounted Secret.
  const std::filesystem::path tmp = path.string() + ".new";
  std::ofstream(tmp, std::ios::binary) << text;
  std::filesystem::rename(tmp, path);
}

// Retries `attempt` until it returns true or `seconds` pass (file watchers
// notice changes within a few seconds).
bool Eventually(const std::function<bool()>& attempt, double seconds = 15) {
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  while (std::chrono::steady_clock::now() < end) {
    if (attempt()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return false;
}

// Asks `channel`'s server to list its services by reflection; the stream's
// final status.
grpc::StatusCode ListServicesByReflection(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest list;
  list.set_list_services("");
  stream->Write(list);
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  while (stream->Read(&response)) {
  }
  return stream->Finish().error_code();
}

class Security : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                     ("attention_tls_" + std::to_string(getpid())));
    std::string out;
    for (const char* sub : {"a", "b"}) {  // two independent CAs and their certificates
      ASSERT_EQ(
          RunCommand({"/bin/bash", SourcePath("scripts/make-certs.sh"), (*dir_ / sub).string()},
                     &out),
          0)
          << out;
    }
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static std::string P(const std::string& name) { return (*dir_ / name).string(); }

  // A client trusting `ca` (empty: plaintext), with a client certificate
  // `cert` (a/client, a/rogue-client; empty: none) and `token`.
  static ChannelSecurity Client(const std::string& ca, const std::string& cert = "",
                                const std::string& token = "") {
    ChannelSecurity s;
    s.tls = !ca.empty();
    if (s.tls) s.root_pem = ReadAll(P(ca + ".pem"));
    if (!cert.empty()) {
      s.cert_chain_pem = ReadAll(P(cert + ".pem"));
      s.private_key_pem = ReadAll(P(cert + ".key"));
    }
    s.token = token;
    return s;
  }

  static absl::Status Models(const ServerProcess& server, const ChannelSecurity& security) {
    AttentionClient c(AttentionClient::Connect(server.target(), 1 << 20, false, security));
    return c.ListModels({/*timeout_seconds=*/10}).status();
  }

  static std::filesystem::path* dir_;
};
std::filesystem::path* Security::dir_ = nullptr;

TEST_F(Security, TlsAnswersExactlyAndRefusesPlaintextAndStrangers) {
  ServerProcess server({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"), "--model",
                        "demo=" + SourcePath("models/demo.safetensors")});
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_THAT(server.Output(), HasSubstr("; TLS; models"));

  absl::StatusOr<std::unique_ptr<Fixture>> f =
      LoadFixture(SourcePath("tests/fixtures/e2e_demo_self_avg.safetensors"));
  ASSERT_TRUE(f.ok());
  AttentionClient c(AttentionClient::Connect(server.target(), 1 << 20, false, Client("a/ca")));
  absl::StatusOr<v1::AttentionResponse> r = c.SelfAttention(ToSelfAttentionRequest(**f));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LE(ErrorAgainst(r->output(), *(*f)->expected_output), 1e-4);
  EXPECT_LE(ErrorAgainst(r->weights(), *(*f)->expected_weights), 1e-4);

  EXPECT_EQ(Models(server, Client("")).code(), absl::StatusCode::kUnavailable);
  const absl::Status stranger = Models(server, Client("b/ca"));  // trusts another CA
  EXPECT_EQ(stranger.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(stranger.message()), HasSubstr("TLS handshake failed"));
  ChannelSecurity misnamed = Client("a/ca");
  misnamed.server_name = "not-this-server.example";
  EXPECT_THAT(std::string(Models(server, misnamed).message()), HasSubstr("TLS handshake failed"));
}

TEST_F(Security, MutualTlsNeedsAClientCertificateFromTheCa) {
  ServerProcess server({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"),
                        "--tls-client-ca", P("a/ca.pem")});
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_THAT(server.Output(), HasSubstr("; mutual TLS; models"));
  EXPECT_FALSE(Models(server, Client("a/ca")).ok());                    // no certificate
  EXPECT_FALSE(Models(server, Client("a/ca", "a/rogue-client")).ok());  // another CA's
  EXPECT_FALSE(Models(server, Client("a/ca", "b/client")).ok());        // another CA's
  EXPECT_TRUE(Models(server, Client("a/ca", "a/client")).ok());
}

TEST_F(Security, TokensAreRequiredExceptForHealthAndNeverPrinted) {
  const std::string tokens = P("tokens");
  WriteAll(tokens, std::string("# who may call\n\n") + kToken + "\nsecond-token\n");
  ServerProcess server({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"),
                        "--auth-token-file", tokens, "--model",
                        "demo=" + SourcePath("models/demo.safetensors")});
  ASSERT_TRUE(server.ok()) << server.Output();

  const absl::Status none = Models(server, Client("a/ca"));
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(none.message()), HasSubstr("authorization: missing"));
  const absl::Status wrong = Models(server, Client("a/ca", "", "not-a-token"));
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(wrong.message()), Not(HasSubstr("not-a-token")));
  EXPECT_TRUE(Models(server, Client("a/ca", "", kToken)).ok());
  EXPECT_TRUE(Models(server, Client("a/ca", "", "second-token")).ok());

  AttentionClient anonymous(
      AttentionClient::Connect(server.target(), 1 << 20, false, Client("a/ca")));
  absl::StatusOr<std::string> health = anonymous.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, "SERVING");

  // Reflection is behind the tokens too.
  EXPECT_EQ(ListServicesByReflection(
                AttentionClient::Connect(server.target(), 1 << 20, false, Client("a/ca"))),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ListServicesByReflection(AttentionClient::Connect(server.target(), 1 << 20, false,
                                                              Client("a/ca", "", kToken))),
            grpc::StatusCode::OK);

  // The CLI takes the token from a file or from ATTENTION_TOKEN.
  const std::string token_file = P("my-token");
  WriteAll(token_file, std::string(kToken) + "\n");
  std::string out;
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "--tls-ca", P("a/ca.pem"),
                        "--token-file", token_file, "models"},
                       &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("demo"));
  EXPECT_EQ(RunCommand({"/usr/bin/env", std::string("ATTENTION_TOKEN=") + kToken, ClientBinary(),
                        "--target", server.target(), "--tls-ca", P("a/ca.pem"), "models"},
                       &out),
            0)
      << out;
  EXPECT_EQ(
      RunCommand({ClientBinary(), "--target", server.target(), "--tls-ca", P("a/ca.pem"), "models"},
                 &out),
      1);
  EXPECT_THAT(out, HasSubstr("UNAUTHENTICATED: authorization: missing"));
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "--tls=true", "--tls-ca",
                        P("a/ca.pem"), "--token-file", token_file, "models"},
                       &out),
            0)
      << out;
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "load", "--tls=maybe"}, &out),
            2);
  EXPECT_THAT(out, HasSubstr("--tls: expected true or false"));

  // The load tool too, every answer verified.
  const std::string report = P("load.json");
  EXPECT_EQ(
      RunCommand(
          {ClientBinary(), "--target",    server.target(), "load",
           "--tls-ca",     P("a/ca.pem"), "--token-file",  token_file,
           "--model",      "demo",        "--model-file",  SourcePath("models/demo.safetensors"),
           "--batch",      "2",           "--seq",         "8",
           "--requests",   "20",          "--warmup",      "0",
           "--verify",     "100",         "--json",        report},
          &out),
      0)
      << out;
  const std::string json = ReadAll(report);
  EXPECT_THAT(json, HasSubstr("\"ok\": 20"));
  EXPECT_THAT(json, HasSubstr("\"mismatches\": 0"));

  EXPECT_EQ(server.Stop(SIGTERM, 15), 0);
  EXPECT_THAT(server.Output(), Not(HasSubstr(kToken)));
  EXPECT_THAT(server.Output(), Not(HasSubstr("not-a-token")));
}

TEST_F(Security, TokenAndCertificateFilesAreReReadWithoutARestart) {
  const std::string tokens = P("rotating-tokens");
  WriteAll(tokens, "old-token\n");
  const std::filesystem::path cert_dir = *dir_ / "live";
  std::filesystem::create_directories(cert_dir);
  std::filesystem::copy_file(P("a/server.pem"), cert_dir / "server.pem");
  std::filesystem::copy_file(P("a/server.key"), cert_dir / "server.key");
  ServerProcess server({"--tls-cert", (cert_dir / "server.pem").string(), "--tls-key",
                        (cert_dir / "server.key").string(), "--auth-token-file", tokens});
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_TRUE(Models(server, Client("a/ca", "", "old-token")).ok());

  WriteAll(tokens, "new-token\n");
  EXPECT_TRUE(Eventually([&] { return Models(server, Client("a/ca", "", "new-token")).ok(); }));
  EXPECT_EQ(Models(server, Client("a/ca", "", "old-token")).code(),
            absl::StatusCode::kUnauthenticated);

  // A new certificate from another CA: new connections get it.
  EXPECT_FALSE(Models(server, Client("b/ca", "", "new-token")).ok());
  WriteAll(cert_dir / "server.key", ReadAll(P("b/server.key")));
  WriteAll(cert_dir / "server.pem", ReadAll(P("b/server.pem")));
  EXPECT_TRUE(Eventually([&] { return Models(server, Client("b/ca", "", "new-token")).ok(); }));
  EXPECT_FALSE(Models(server, Client("a/ca", "", "new-token")).ok());
}

TEST_F(Security, BadFilesOrTokensWithoutTlsRefuseToStartWithOneLine) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--tls-cert", P("a/server.pem"), "--tls-key", P("b/server.key")},
       "--tls-key " + P("b/server.key") + " does not match the certificate"},
      {{"--tls-cert", P("a/missing.pem"), "--tls-key", P("a/server.key")},
       "--tls-cert " + P("a/missing.pem") + ": cannot read"},
      {{"--tls-cert", P("a/server.key"), "--tls-key", P("a/server.key")}, "no PEM certificate"},
      {{"--tls-cert", P("a/server.pem")}, "--tls-cert and --tls-key go together"},
      {{"--auth-token-file", P("a/ca.pem")}, "--auth-token-file needs --tls-cert"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> argv = {ServerBinary(), "--listen=127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string out;
    EXPECT_EQ(RunCommand(argv, &out), 1) << out;
    EXPECT_THAT(out, HasSubstr(message));
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  }
}

TEST_F(Security, ReflectionCanBeTurnedOff) {
  ServerProcess server({"--reflection=false"});
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_EQ(ListServicesByReflection(AttentionClient::Connect(server.target())),
            grpc::StatusCode::UNIMPLEMENTED);
  ServerProcess with({});
  ASSERT_TRUE(with.ok()) << with.Output();
  EXPECT_EQ(ListServicesByReflection(AttentionClient::Connect(with.target())),
            grpc::StatusCode::OK);
}

// A client nobody here wrote: Python's grpcio (Debian python3-grpcio) with
// ssl_channel_credentials and the token as metadata.
TEST_F(Security, PythonGrpcioSpeaksTlsAndTokens) {
  std::string out;
  if (RunCommand({"/usr/bin/python3", "-c", "import grpc"}, &out) != 0) {
    GTEST_SKIP() << "python3-grpcio is not installed (scripts/install-deps.sh installs it)";
  }
  const std::string tokens = P("py-tokens");
  WriteAll(tokens, std::string(kToken) + "\n");
  ServerProcess server({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"),
                        "--tls-client-ca", P("a/ca.pem"), "--auth-token-file", tokens});
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_EQ(RunCommand({"/usr/bin/python3", SourcePath("tests/grpcio_tls_client.py"),
                        server.target(), P("a"), kToken},
                       &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("with token: OK"));
  EXPECT_THAT(out, HasSubstr("without token: UNAUTHENTICATED"));
  EXPECT_THAT(out, HasSubstr("without client certificate: UNAVAILABLE"));
}

}  // namespace
}  // namespace testing
}  // namespace attention
