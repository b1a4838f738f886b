#include "server/security.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
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

namespace attention {
namespace server {
namespace {

using Digest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;

Digest Sha256(absl::string_view s) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path, ": cannot read (", std::strerror(errno), ")"));
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

// The first certificate of a PEM file; InvalidArgument naming the flag.
absl::StatusOr<X509Ptr> ReadCertificate(const std::string& path, absl::string_view flag) {
  absl::StatusOr<std::string> pem = ReadFile(path, flag);
  if (!pem.ok()) return pem.status();
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path, ": no PEM certificate in the file"));
  }
  return cert;
}

absl::Status CheckKeyMatches(const SecurityConfig& c, X509* cert) {
  absl::StatusOr<std::string> pem = ReadFile(c.tls_key, "--tls-key");
  if (!pem.ok()) return pem.status();
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", c.tls_key, ": no PEM private key in the file"));
  }
  const bool match = X509_check_private_key(cert, key.get()) == 1;
  ERR_clear_error();
  if (!match) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", c.tls_key, " does not match the certificate in --tls-cert ", c.tls_cert));
  }
  return absl::OkStatus();
}

// The accepted tokens, re-read when the file changes.
class TokenFile {
 public:
  explicit TokenFile(std::string path) : path_(std::move(path)) {}

  // Reads the file now. InvalidArgument when unreadable or without tokens.
  absl::Status Load() ABSL_LOCKS_EXCLUDED(mu_) {
    struct stat st {};
    if (stat(path_.c_str(), &st) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-token-file ", path_, ": cannot read (", std::strerror(errno), ")"));
    }
    absl::StatusOr<std::string> text = ReadFile(path_, "--auth-token-file");
    if (!text.ok()) return text.status();
    std::vector<Digest> digests;
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') continue;
      digests.push_back(Sha256(line));
    }
    if (digests.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-token-file ", path_, ": no token in the file"));
    }
    absl::MutexLock lock(&mu_);
    digests_ = std::move(digests);
    stamp_ = Stamp(st);
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
  using FileStamp = std::array<int64_t, 4>;
  static FileStamp Stamp(const struct stat& st) {
    return {static_cast<int64_t>(st.st_mtim.tv_sec), static_cast<int64_t>(st.st_mtim.tv_nsec),
            static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_ino)};
  }

  void MaybeReload() ABSL_LOCKS_EXCLUDED(mu_) {
    const auto now = std::chrono::steady_clock::now();
    {
      absl::MutexLock lock(&mu_);
      if (now - last_check_ < std::chrono::seconds(1)) return;
      last_check_ = now;
    }
    struct stat st {};
    if (stat(path_.c_str(), &st) != 0) return;  // e.g. mid-rename: keep the tokens
    {
      absl::MutexLock lock(&mu_);
      if (Stamp(st) == stamp_) return;
    }
    if (absl::Status s = Load(); !s.ok()) {
      std::fprintf(stderr, "attention-server: error: keeping the previous tokens: %s\n",
                   std::string(s.message()).c_str());
      absl::MutexLock lock(&mu_);
      stamp_ = Stamp(st);  // say it once per change
    }
  }

  const std::string path_;
  absl::Mutex mu_;
  std::vector<Digest> digests_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_) = {};
  std::chrono::steady_clock::time_point last_check_ ABSL_GUARDED_BY(mu_) =
      std::chrono::steady_clock::now();
};

// Checks `authorization: Bearer TOKEN` on every call but health checks.
class TokenAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenAuthProcessor(std::unique_ptr<TokenFile> tokens) : tokens_(std::move(tokens)) {}

  bool IsBlocking() const override { return false; }  // a stat at most once a second

  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext* /*context*/,
                       OutputMetadata* consumed, OutputMetadata* /*response*/) override {
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
  std::unique_ptr<TokenFile> tokens_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityConfig& c) {
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
    return grpc::InsecureServerCredentials();
  }
  absl::StatusOr<X509Ptr> cert = ReadCertificate(c.tls_cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  if (absl::Status s = CheckKeyMatches(c, cert->get()); !s.ok()) return s;
  if (!c.tls_client_ca.empty()) {
    if (absl::StatusOr<X509Ptr> ca = ReadCertificate(c.tls_client_ca, "--tls-client-ca");
        !ca.ok()) {
      return ca.status();
    }
  }
  std::unique_ptr<TokenFile> tokens;
  if (!c.auth_token_file.empty()) {
    tokens = std::make_unique<TokenFile>(c.auth_token_file);
    if (absl::Status s = tokens->Load(); !s.ok()) return s;
  }

  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      c.tls_key, c.tls_cert, c.tls_client_ca, kCertificateRefreshSeconds);
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
  return creds;
}

std::string DescribeSecurity(const SecurityConfig& c) {
  std::string s = c.tls_cert.empty() ? "plaintext" : c.tls_client_ca.empty() ? "TLS" : "mutual TLS";
  if (!c.auth_token_file.empty()) s += ", bearer tokens";
  return s;
}

}  // namespace server
}  // namespace attention
