#include "server/security.h"

#include <openssl/sha.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "server/certificate_watcher.h"
#include "server/tls_files.h"

namespace attention {
namespace server {
namespace {

using Digest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;

Digest Sha256(absl::string_view s) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

// gRPC re-reads the private copies this often (they change only when the
// watcher swaps in a validated set).
constexpr unsigned int kProviderRefreshSeconds = 1;

// The accepted tokens, re-read when the file changes. After start-up a file
// without tokens (or none at all) accepts no token: revoking fails closed.
class TokenFile {
 public:
  explicit TokenFile(std::string path) : path_(std::move(path)) {}

  // Reads the file now (start-up). InvalidArgument when unreadable or
  // without tokens.
  absl::Status Load() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::StatusOr<Tokens> read = Read();
    if (!read.ok()) return read.status();
    absl::MutexLock lock(&mu_);
    digests_ = std::move(read->digests);
    stamp_ = read->stamp;
    return absl::OkStatus();
  }

  // Whether `token` is one of the tokens (constant time in the token's
  // content). Re-reads the file first when it changed.
  bool Accepts(absl::string_view token) ABSL_LOCKS_EXCLUDED(mu_) {
    MaybeReload();
    const Digest d = Sha256(token);
    absl::MutexLock lock(&mu_);
    int match = 0;
    for (const Digest& t : digests_) match |= CRYPTO_memcmp(t.data(), d.data(), d.size()) == 0;
    return match != 0;
  }

 private:
  struct Tokens {
    std::vector<Digest> digests;
    FileStamp stamp;
  };

  // The tokens of the file; InvalidArgument when it cannot be read or has
  // none.
  absl::StatusOr<Tokens> Read() const {
    absl::StatusOr<FileContents> text = ReadBounded(path_, "--auth-token-file");
    if (!text.ok()) return text.status();
    Tokens tokens;
    tokens.stamp = text->stamp;
    for (absl::string_view line : absl::StrSplit(text->text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') continue;
      tokens.digests.push_back(Sha256(line));
    }
    if (tokens.digests.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-token-file ", path_, ": no token in the file"));
    }
    return tokens;
  }

  void MaybeReload() ABSL_LOCKS_EXCLUDED(mu_) {
    const auto now = std::chrono::steady_clock::now();
    {
      absl::MutexLock lock(&mu_);
      if (now - last_check_ < std::chrono::seconds(1)) return;
      last_check_ = now;
    }
    // A missing file has a stamp of its own (the error): deleting the file
    // is a change too. Renames are atomic: there is no moment without it.
    const FileStamp stamp = StampOfPath(path_);
    {
      absl::MutexLock lock(&mu_);
      if (stamp == stamp_) return;
    }
    absl::StatusOr<Tokens> read = Read();
    bool was_refusing = false;
    size_t count = 0;
    {
      absl::MutexLock lock(&mu_);
      was_refusing = digests_.empty();
      if (read.ok()) {
        digests_ = std::move(read->digests);
        stamp_ = read->stamp;
        count = digests_.size();
      } else {
        digests_.clear();
        stamp_ = stamp;  // say it once per change
      }
    }
    if (!read.ok()) {
      std::fprintf(stderr, "attention-server: error: %s: every call is refused until it has one\n",
                   std::string(read.status().message()).c_str());
      std::fflush(stderr);
    } else if (was_refusing) {
      std::printf("attention-server: --auth-token-file %s: %zu token(s) again\n", path_.c_str(),
                  count);
      std::fflush(stdout);
    }
  }

  const std::string path_;
  absl::Mutex mu_;
  std::vector<Digest> digests_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_) = {};
  std::chrono::steady_clock::time_point last_check_ ABSL_GUARDED_BY(mu_) =
      std::chrono::steady_clock::now();
};

// Checks `authorization: Bearer TOKEN` on every call but health checks
// (without a TokenFile every call passes).
class TokenAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenAuthProcessor(std::unique_ptr<TokenFile> tokens) : tokens_(std::move(tokens)) {}

  bool IsBlocking() const override { return false; }  // a stat at most once a second

  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext* /*context*/,
                       OutputMetadata* consumed, OutputMetadata* /*response*/) override {
    if (tokens_ == nullptr) return grpc::Status::OK;
    auto path = metadata.find(":path");
    if (path != metadata.end() &&
        absl::StartsWith(absl::string_view(path->second.data(), path->second.size()),
                         "/grpc.health.v1.Health/")) {
      return grpc::Status::OK;
    }
    auto auth = metadata.find("authorization");
    if (auth == metadata.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: missing; this server needs the metadata "
                          "'authorization: Bearer TOKEN'");
    }
    const absl::string_view value(auth->second.data(), auth->second.size());
    constexpr absl::string_view kBearer = "Bearer ";
    if (!absl::StartsWithIgnoreCase(value, kBearer)) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: expected 'Bearer TOKEN'");
    }
    if (!tokens_->Accepts(absl::StripAsciiWhitespace(value.substr(kBearer.size())))) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: the bearer token is not accepted");
    }
    consumed->emplace("authorization", std::string(value));  // the service never sees it
    return grpc::Status::OK;
  }

 private:
  const std::unique_ptr<TokenFile> tokens_;
};

}  // namespace

absl::StatusOr<ServerSecurity> MakeServerSecurity(const SecurityConfig& c) {
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (c.tls_cert.empty()) {
    if (!c.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    if (!c.auth_token_file.empty()) {
      return absl::InvalidArgumentError(
          "--auth-token-file needs --tls-cert and --tls-key: a bearer token sent in plaintext "
          "can be read by anyone on the path");
    }
    return ServerSecurity{grpc::InsecureServerCredentials(), nullptr};
  }
  absl::StatusOr<TlsFiles> files = ReadTlsFiles(c);
  if (!files.ok()) return files.status();
  std::unique_ptr<TokenFile> tokens;
  if (!c.auth_token_file.empty()) {
    tokens = std::make_unique<TokenFile>(c.auth_token_file);
    if (absl::Status s = tokens->Load(); !s.ok()) return s;
  }
  absl::StatusOr<WatchedCertificates> watched = WatchCertificates(c, *files);
  if (!watched.ok()) return watched.status();
  WarnAboutDates(c.tls_cert, files->cert.get());

  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      watched->key_path, watched->cert_path, watched->ca_path, kProviderRefreshSeconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!c.tls_client_ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  std::shared_ptr<grpc::ServerCredentials> creds =
      grpc::experimental::TlsServerCredentials(options);
  if (creds == nullptr)
    return absl::InvalidArgumentError("--tls-cert: gRPC refused the TLS options");
  if (tokens != nullptr) {
    creds->SetAuthMetadataProcessor(std::make_shared<TokenAuthProcessor>(std::move(tokens)));
  }
  return ServerSecurity{std::move(creds), std::move(watched->watcher)};
}

std::string DescribeSecurity(const SecurityConfig& c) {
  std::string s = c.tls_cert.empty() ? "plaintext" : c.tls_client_ca.empty() ? "TLS" : "mutual TLS";
  if (!c.auth_token_file.empty()) s += ", bearer tokens";
  return s;
}

}  // namespace server
}  // namespace attention
