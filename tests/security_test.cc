// End to end: TLS, mutual TLS and bearer tokens on the real attention-server,
// with certificates made at test time by scripts/make-certs.sh (openssl) and,
// for validity dates the script cannot give, by OpenSSL's library.
#include "client/security.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "proto/reflection.grpc.pb.h"  // tests/proto, generated
#include "tests/e2e_util.h"
#include "tests/server_process.h"

namespace attention {
namespace testing {
namespace {

using client::AttentionClient;
using client::ChannelSecurity;
using ::testing::AnyOf;
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

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Writes a self-signed certificate for localhost valid from now +
// `not_before_s` to now + `not_after_s` (negative: in the past), and its key.
void MakeCertificate(const std::string& cert_path, const std::string& key_path, long not_before_s,
                     long not_after_s) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ASSERT_NE(key, nullptr);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
  X509_gmtime_adj(X509_getm_notBefore(cert), not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(cert), not_after_s);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  ASSERT_GT(X509_sign(cert, key, EVP_sha256()), 0);
  BIO* out = BIO_new_file(cert_path.c_str(), "w");
  PEM_write_bio_X509(out, cert);
  BIO_free(out);
  out = BIO_new_file(key_path.c_str(), "w");
  PEM_write_bio_PrivateKey(out, key, nullptr, nullptr, 0, nullptr, nullptr);
  BIO_free(out);
  X509_free(cert);
  EVP_PKEY_free(key);
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

  // The environment of a TLS server: its private directory (the links gRPC
  // reads the certificates through) under the suite's, which a server
  // killed at the end of a test leaves behind.
  static std::vector<std::string> Env() { return {"TMPDIR=" + dir_->string()}; }

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

  // Health over a TLS connection of its own: channels with equal arguments
  // otherwise share one (gRPC's global subchannel pool), and a handshake with
  // the server's current certificate is what is being tested.
  static absl::StatusOr<std::string> HealthOnANewConnection(const ServerProcess& server,
                                                            const ChannelSecurity& security) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    std::shared_ptr<grpc::ChannelCredentials> credentials =
        client::MakeChannelCredentials(security, &args);
    AttentionClient c(grpc::CreateCustomChannel(server.target(), credentials, args));
    return c.Health("", {/*timeout_seconds=*/10});
  }

  static std::filesystem::path* dir_;
};
std::filesystem::path* Security::dir_ = nullptr;

TEST_F(Security, TlsAnswersExactlyAndRefusesPlaintextAndStrangers) {
  ServerProcess server({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"), "--model",
                        "demo=" + SourcePath("models/demo.safetensors")},
                       Env());
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
                        "--tls-client-ca", P("a/ca.pem")},
                       Env());
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_THAT(server.Output(), HasSubstr("; mutual TLS; models"));
  EXPECT_FALSE(Models(server, Client("a/ca")).ok());                    // no certificate
  EXPECT_FALSE(Models(server, Client("a/ca", "a/rogue-client")).ok());  // another CA's
  EXPECT_FALSE(Models(server, Client("a/ca", "b/client")).ok());        // another CA's
  EXPECT_TRUE(Models(server, Client("a/ca", "a/client")).ok());
  // The CLI says what to check when the server closes the handshake (gRPC
  // itself says only "Socket closed").
  std::string out;
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "--tls-ca", P("a/ca.pem"),
                        "--tls-cert", P("a/rogue-client.pem"), "--tls-key", P("a/rogue-client.key"),
                        "--timeout", "10", "models"},
                       &out),
            1);
  EXPECT_THAT(out, AnyOf(HasSubstr("the server may have refused the client certificate"),
                         HasSubstr("TLS handshake failed")))
      << out;
  EXPECT_EQ(RunCommand({ClientBinary(), "--target", server.target(), "--tls-ca", P("a/ca.pem"),
                        "--timeout", "10", "models"},
                       &out),
            1);
  EXPECT_THAT(out, AnyOf(HasSubstr("the server may require a client certificate"),
                         HasSubstr("TLS handshake failed")))
      << out;
}

TEST_F(Security, TokensAreRequiredExceptForHealthAndNeverPrinted) {
  const std::string tokens = P("tokens");
  WriteAll(tokens, std::string("# who may call\n\n") + kToken + "\nsecond-token\n");
  ServerProcess server(
      {"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"), "--auth-token-file", tokens,
       "--model", "demo=" + SourcePath("models/demo.safetensors")},
      Env());
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
                        (cert_dir / "server.key").string(), "--auth-token-file", tokens},
                       Env());
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

// A token file left without tokens (comments only, empty, deleted) refuses
// every call until it has tokens again; it never keeps the revoked ones.
TEST_F(Security, RevokedTokensAreRefusedUntilTheFileHasTokensAgain) {
  const std::string tokens = P("revoked-tokens");
  WriteAll(tokens, "token-a\n");
  ServerProcess server({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"),
                        "--auth-token-file", tokens},
                       Env());
  ASSERT_TRUE(server.ok()) << server.Output();
  ASSERT_TRUE(Models(server, Client("a/ca", "", "token-a")).ok());
  auto refused = [&](const std::string& token) {
    return Models(server, Client("a/ca", "", token)).code() == absl::StatusCode::kUnauthenticated;
  };
  auto accepted = [&](const std::string& token) {
    return Models(server, Client("a/ca", "", token)).ok();
  };

  WriteAll(tokens, "# every token revoked\n\n");  // (a) comments only
  EXPECT_TRUE(Eventually([&] { return refused("token-a"); }, 3));
  EXPECT_TRUE(refused("token-a"));
  AttentionClient anonymous(
      AttentionClient::Connect(server.target(), 1 << 20, false, Client("a/ca")));
  absl::StatusOr<std::string> health = anonymous.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, "SERVING");

  WriteAll(tokens, "token-b\n");  // (b) a new token
  EXPECT_TRUE(Eventually([&] { return accepted("token-b"); }, 3));
  EXPECT_TRUE(refused("token-a"));

  std::filesystem::remove(tokens);  // (c) deleted
  EXPECT_TRUE(Eventually([&] { return refused("token-b"); }, 3));
  EXPECT_TRUE(refused("token-b"));

  WriteAll(tokens, "token-b\n");  // (d) back
  EXPECT_TRUE(Eventually([&] { return accepted("token-b"); }, 3));

  WriteAll(tokens, "");  // empty
  EXPECT_TRUE(Eventually([&] { return refused("token-b"); }, 3));
  WriteAll(tokens, "token-b\n");
  EXPECT_TRUE(Eventually([&] { return accepted("token-b"); }, 3));

  const std::string out = server.Output();
  // Once per change: comments only, deleted, empty.
  EXPECT_EQ(Count(out, "every call is refused until it has one"), 3) << out;
  EXPECT_THAT(out, HasSubstr("attention-server: error: --auth-token-file " + tokens +
                             ": no token in the file: every call is refused until it has one"));
  EXPECT_THAT(out, HasSubstr("--auth-token-file " + tokens + ": cannot read (No such file"));
  EXPECT_THAT(out, Not(HasSubstr("token-a")));
  EXPECT_THAT(out, Not(HasSubstr("token-b")));
}

// A rotation that does not validate as at start-up (not PEM, a certificate
// for another key) is refused with one line and the last good pair served;
// a valid one is taken, even when written key first, then certificate.
TEST_F(Security, ABrokenCertificateRotationKeepsTheLastGoodPair) {
  const std::filesystem::path live = *dir_ / "rotating";
  std::filesystem::create_directories(live);
  const std::string cert = (live / "server.pem").string();
  const std::string key = (live / "server.key").string();
  WriteAll(cert, ReadAll(P("a/server.pem")));
  WriteAll(key, ReadAll(P("a/server.key")));
  ServerProcess server({"--tls-cert", cert, "--tls-key", key, "--admin-listen=127.0.0.1:0"}, Env());
  ASSERT_TRUE(server.ok()) << server.Output();
  const int admin = AdminPort(server);
  auto refusals = [admin] {
    std::string text;
    if (HttpGet(admin, "/metrics", &text) != 200) return -1.0;
    return Sample(text, "attention_tls_certificate_reload_failures_total");
  };
  EXPECT_EQ(refusals(), 0.0);
  auto serving = [&](const std::string& ca) {
    absl::StatusOr<std::string> health = HealthOnANewConnection(server, Client(ca));
    return health.ok() && *health == "SERVING";
  };
  ASSERT_TRUE(serving("a/ca"));
  constexpr char kKept[] = "keeping the previous certificate";

  WriteAll(cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
  EXPECT_TRUE(Eventually([&] { return Count(server.Output(), kKept) == 1; }, 6));
  std::this_thread::sleep_for(std::chrono::seconds(3));  // gRPC's refresh had its chance
  EXPECT_TRUE(serving("a/ca")) << server.Output();
  EXPECT_THAT(server.Output(), HasSubstr("attention-server: error: --tls-cert " + cert +
                                         ": no PEM certificate in the file: " + kKept));

  WriteAll(cert, ReadAll(P("a/client.pem")));  // the same CA, another key
  EXPECT_TRUE(Eventually([&] { return Count(server.Output(), kKept) == 2; }, 6));
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_TRUE(serving("a/ca")) << server.Output();
  EXPECT_THAT(server.Output(),
              HasSubstr("--tls-key " + key + " does not match the certificate in --tls-cert " +
                        cert + ": " + kKept));

  WriteAll(key, ReadAll(P("b/server.key")));  // a new pair: key first, then certificate
  WriteAll(cert, ReadAll(P("b/server.pem")));
  EXPECT_TRUE(Eventually([&] { return serving("b/ca"); }, 8)) << server.Output();
  EXPECT_FALSE(serving("a/ca"));
  EXPECT_EQ(Count(server.Output(), kKept), 2) << server.Output();

  // And a broken one after it keeps the new pair.
  WriteAll(key, "not a key\n");
  EXPECT_TRUE(Eventually([&] { return Count(server.Output(), kKept) == 3; }, 6));
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_TRUE(serving("b/ca")) << server.Output();
  EXPECT_THAT(server.Output(), HasSubstr("--tls-key " + key + ": no PEM private key in the file"));
  EXPECT_EQ(refusals(), 3.0);

  // gRPC reads the copies through links into the server's memory: no key on
  // disk, and nothing left after a stop.
  const std::filesystem::path tmp = *dir_ / "rotating-tmp";
  std::filesystem::create_directories(tmp);
  ServerProcess other({"--tls-cert", cert, "--tls-key", P("b/server.key")},
                      {"TMPDIR=" + tmp.string()});
  ASSERT_TRUE(other.ok()) << other.Output();
  int links = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(tmp)) {
    EXPECT_TRUE(entry.is_symlink() || entry.is_directory()) << entry.path();
    links += entry.is_symlink();
  }
  EXPECT_EQ(links, 3);  // current, cert.pem, key.pem
  EXPECT_EQ(other.Stop(SIGTERM, 15), 0);
  EXPECT_TRUE(std::filesystem::is_empty(tmp));
}

// --tls-cert /dev/zero once read until the process was killed.
TEST_F(Security, FilesLargerThan1MiBOrEndlessAreRefused) {
  const std::string big = P("big.pem");
  {
    std::ofstream out(big, std::ios::binary);
    out << ReadAll(P("a/server.pem")) << std::string(size_t{2} << 20, '\n');
  }
  const std::string fifo = P("fifo.pem");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const std::string tokens = P("tokens-for-size");
  WriteAll(tokens, "a-token\n");
  const std::vector<std::string> tls = {"--tls-cert", P("a/server.pem"), "--tls-key",
                                        P("a/server.key")};
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--tls-cert", "/dev/zero", "--tls-key", "x"}, "--tls-cert /dev/zero: larger than 1 MiB"},
      {{"--tls-cert", P("a/server.pem"), "--tls-key", "/dev/zero"},
       "--tls-key /dev/zero: larger than 1 MiB"},
      {{"--tls-cert", big, "--tls-key", P("a/server.key")},
       "--tls-cert " + big + ": larger than 1 MiB"},
      {{"--tls-cert", fifo, "--tls-key", P("a/server.key")},
       "--tls-cert " + fifo + ": no PEM certificate"},  // a pipe without a writer: empty
      {{"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"), "--tls-client-ca",
        "/dev/zero"},
       "--tls-client-ca /dev/zero: larger than 1 MiB"},
      {{"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key"), "--auth-token-file",
        "/dev/zero"},
       "--auth-token-file /dev/zero: larger than 1 MiB"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> argv = {ServerBinary(), "--listen=127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string out;
    EXPECT_EQ(RunCommand(argv, &out, /*timeout_s=*/10), 1) << out;
    EXPECT_THAT(out, HasSubstr(message));
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  }
}

// The operator may be rotating: start, but say so.
TEST_F(Security, AnExpiredOrNotYetValidCertificateStartsWithAWarning) {
  const std::string expired = P("expired.pem");
  const std::string expired_key = P("expired.key");
  MakeCertificate(expired, expired_key, -30 * 86400, -86400);
  ServerProcess server({"--tls-cert", expired, "--tls-key", expired_key}, Env());
  ASSERT_TRUE(server.ok()) << server.Output();
  EXPECT_THAT(server.Output(), HasSubstr("attention-server: warning: --tls-cert " + expired +
                                         ": the certificate expired on "));

  const std::string early = P("early.pem");
  const std::string early_key = P("early.key");
  MakeCertificate(early, early_key, 86400, 30 * 86400);
  ServerProcess later({"--tls-cert", early, "--tls-key", early_key}, Env());
  ASSERT_TRUE(later.ok()) << later.Output();
  EXPECT_THAT(later.Output(), HasSubstr("attention-server: warning: --tls-cert " + early +
                                        ": the certificate is not valid before "));

  ServerProcess good({"--tls-cert", P("a/server.pem"), "--tls-key", P("a/server.key")}, Env());
  ASSERT_TRUE(good.ok()) << good.Output();
  EXPECT_THAT(good.Output(), Not(HasSubstr("warning")));
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
                        "--tls-client-ca", P("a/ca.pem"), "--auth-token-file", tokens},
                       Env());
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
