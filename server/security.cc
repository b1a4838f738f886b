#include "server/security.h"

#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
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

constexpr size_t kMaxFileBytes = size_t{1} << 20;
// How long a read waits for a pipe whose writer has not written yet.
constexpr int kPipeWaitMs = 1000;
// gRPC re-reads the private copies this often (they change only when the
// watcher swaps in a validated set).
constexpr unsigned int kProviderRefreshSeconds = 1;
// A rotation that fails validation is looked at again after this long before
// it is called broken: a set written file by file may have been caught
// half-way.
constexpr absl::Duration kSettle = absl::Milliseconds(500);

std::atomic<int64_t> g_certificate_reload_failures{0};

// What identifies a version of a file: an error (errno of stat, 0 if none),
// then device, inode, size, modification and status change times.
using FileStamp = std::array<int64_t, 8>;

FileStamp StampOf(const struct stat& st) {
  return {0,
          static_cast<int64_t>(st.st_dev),
          static_cast<int64_t>(st.st_ino),
          static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec),
          static_cast<int64_t>(st.st_mtim.tv_nsec),
          static_cast<int64_t>(st.st_ctim.tv_sec),
          static_cast<int64_t>(st.st_ctim.tv_nsec)};
}

FileStamp StampOfPath(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return {errno != 0 ? errno : -1, 0, 0, 0, 0, 0, 0, 0};
  return StampOf(st);
}

struct FileContents {
  std::string text;
  FileStamp stamp;  // of what was read
};

// The contents of `path`, at most kMaxFileBytes: a larger regular file is
// refused by its size, anything else (a device such as /dev/zero, a pipe) by
// reading one byte past the limit. Opened non-blocking so that a pipe without
// a writer reads as empty; a pipe with a silent writer waits kPipeWaitMs.
// InvalidArgument "FLAG PATH: problem".
absl::StatusOr<FileContents> ReadBounded(const std::string& path, absl::string_view flag) {
  auto error = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": ", problem));
  };
  auto cannot_read = [&](int err) {
    return error(absl::StrCat("cannot read (", std::strerror(err), ")"));
  };
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return cannot_read(errno);
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0) return cannot_read(errno);
  if (S_ISDIR(st.st_mode)) return error("is a directory, not a file");
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    return error("larger than 1 MiB");
  }
  FileContents out;
  out.stamp = StampOf(st);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kPipeWaitMs);
  std::vector<char> buffer(64 << 10);
  while (true) {
    const size_t want = std::min(buffer.size(), kMaxFileBytes + 1 - out.text.size());
    const ssize_t n = read(fd, buffer.data(), want);
    if (n > 0) {
      out.text.append(buffer.data(), static_cast<size_t>(n));
      if (out.text.size() > kMaxFileBytes) return error("larger than 1 MiB");
    } else if (n == 0) {
      return out;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return error("nothing to read (a pipe whose writer is silent?)");
      pollfd p{fd, POLLIN, 0};
      poll(&p, 1, static_cast<int>(left.count()));
    } else if (errno != EINTR) {
      return cannot_read(errno);
    }
  }
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

std::unique_ptr<BIO, BioDeleter> MemoryBio(const std::string& s) {
  return std::unique_ptr<BIO, BioDeleter>(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
}

// The first certificate of `pem`; InvalidArgument naming the flag.
absl::StatusOr<X509Ptr> ParseCertificate(const std::string& pem, const std::string& path,
                                         absl::string_view flag) {
  X509Ptr cert(PEM_read_bio_X509(MemoryBio(pem).get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path, ": no PEM certificate in the file"));
  }
  return cert;
}

absl::Status CheckKeyMatches(const SecurityConfig& c, const std::string& key_pem, X509* cert) {
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(
      PEM_read_bio_PrivateKey(MemoryBio(key_pem).get(), nullptr, nullptr, nullptr));
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

// The operator's certificate, key and client CA, as read and checked at
// start-up and at each rotation.
struct TlsFiles {
  std::string cert_pem;
  std::string key_pem;
  std::string ca_pem;  // empty without --tls-client-ca
  X509Ptr cert;        // the first certificate of cert_pem
  std::array<FileStamp, 3> stamps = {};
};

// Reads and validates the TLS files: each PEM parses, the key matches the
// certificate. InvalidArgument naming the flag and the problem.
absl::StatusOr<TlsFiles> ReadTlsFiles(const SecurityConfig& c) {
  TlsFiles files;
  absl::StatusOr<FileContents> cert = ReadBounded(c.tls_cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<X509Ptr> parsed = ParseCertificate(cert->text, c.tls_cert, "--tls-cert");
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<FileContents> key = ReadBounded(c.tls_key, "--tls-key");
  if (!key.ok()) return key.status();
  if (absl::Status s = CheckKeyMatches(c, key->text, parsed->get()); !s.ok()) return s;
  files.cert_pem = std::move(cert->text);
  files.key_pem = std::move(key->text);
  files.cert = std::move(*parsed);
  files.stamps[0] = cert->stamp;
  files.stamps[1] = key->stamp;
  if (!c.tls_client_ca.empty()) {
    absl::StatusOr<FileContents> ca = ReadBounded(c.tls_client_ca, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    if (absl::StatusOr<X509Ptr> root =
            ParseCertificate(ca->text, c.tls_client_ca, "--tls-client-ca");
        !root.ok()) {
      return root.status();
    }
    files.ca_pem = std::move(ca->text);
    files.stamps[2] = ca->stamp;
  }
  return files;
}

std::string FormatTime(const ASN1_TIME* t) {
  struct tm tm {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return "(an unreadable date)";
  char text[64];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

// Why `cert` is outside its validity dates now ("" when it is not).
std::string ValidityProblem(X509* cert) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return "the certificate expired on " + FormatTime(X509_get0_notAfter(cert));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return "the certificate is not valid before " + FormatTime(X509_get0_notBefore(cert));
  }
  return "";
}

void WarnAboutDates(const std::string& path, X509* cert) {
  const std::string problem = ValidityProblem(cert);
  if (problem.empty()) return;
  std::fprintf(stderr,
               "attention-server: warning: --tls-cert %s: %s; serving it until it is replaced\n",
               path.c_str(), problem.c_str());
  std::fflush(stderr);
}

}  // namespace

// gRPC's FileWatcherCertificateProvider serves whatever the files hold, and a
// broken rotation would then fail every new connection. This watcher reads
// the operator's files, and only a set that validates as at start-up is
// handed to the provider, through a private directory (mkdtemp, 0700):
//
//   DIR/current -> gN                          (swapped atomically by rename)
//   DIR/gN/{cert,key,ca}.pem -> /proc/self/fd/F  (F: a memfd, 0600)
//
// The bytes live in memory files of the process: the directory holds links
// only, so no copy of the private key is left on disk, even after SIGKILL.
// gRPC reads key and certificate as two files; it compares their
// modification times (whole seconds) before and after, and retries when they
// differ. Each generation gets a modification time later than the last one,
// so a read that spans a swap is retried rather than served as a mixed pair.
// The previous generation's memory files stay open until the next swap, so
// that a path resolved just before a swap never reaches a reused descriptor.
class CertificateWatcher {
 public:
  // Copies `files` (validated) into a new private directory and starts
  // watching `config`'s files.
  static absl::StatusOr<std::shared_ptr<CertificateWatcher>> Start(const SecurityConfig& config,
                                                                   const TlsFiles& files) {
    const char* tmp = std::getenv("TMPDIR");
    const std::string base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    std::string dir = base + "/attention-server-tls-XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-cert: cannot make a private directory for the TLS files in ", base,
                       " (", std::strerror(errno), ")"));
    }
    std::shared_ptr<CertificateWatcher> watcher(new CertificateWatcher(config, std::move(dir)));
    if (absl::Status s = watcher->Install(files); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--tls-cert: ", s.message()));
    }
    // gRPC reads them by path: through /proc/self/fd, which must be there.
    absl::StatusOr<FileContents> key = ReadBounded(watcher->KeyPath(), "--tls-key");
    if (!key.ok() || key->text != files.key_pem) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-key: cannot hand the key to gRPC through ", watcher->KeyPath(),
                       " (is /proc mounted?)"));
    }
    watcher->seen_ = files.stamps;
    watcher->thread_ = std::thread([w = watcher.get()] { w->Run(); });
    return watcher;
  }

  ~CertificateWatcher() {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    for (int fd : current_fds_) close(fd);
    for (int fd : previous_fds_) close(fd);
  }

  CertificateWatcher(const CertificateWatcher&) = delete;
  CertificateWatcher& operator=(const CertificateWatcher&) = delete;

  // The private copies, for gRPC's FileWatcherCertificateProvider.
  std::string CertPath() const { return dir_ + "/current/cert.pem"; }
  std::string KeyPath() const { return dir_ + "/current/key.pem"; }
  std::string CaPath() const {
    return config_.tls_client_ca.empty() ? "" : dir_ + "/current/ca.pem";
  }

 private:
  using Stamps = std::array<FileStamp, 3>;

  CertificateWatcher(SecurityConfig config, std::string dir)
      : config_(std::move(config)), dir_(std::move(dir)) {}

  Stamps StampsNow() const {
    return {StampOfPath(config_.tls_cert), StampOfPath(config_.tls_key),
            config_.tls_client_ca.empty() ? FileStamp{} : StampOfPath(config_.tls_client_ca)};
  }

  void Run() {
    while (!stop_.WaitForNotificationWithTimeout(absl::Seconds(kCertificateRefreshSeconds))) {
      Check();
    }
  }

  // Takes a changed set of files that validates; refuses one that does not
  // (once per change).
  void Check() {
    while (true) {
      const Stamps before = StampsNow();
      if (before == seen_) return;
      absl::StatusOr<TlsFiles> files = ReadTlsFiles(config_);
      if (files.ok()) {
        seen_ = files->stamps;
        if (files->cert_pem == cert_pem_ && files->key_pem == key_pem_ &&
            files->ca_pem == ca_pem_) {
          return;  // touched, or put back as it was
        }
        if (absl::Status s = Install(*files); !s.ok()) {
          Refuse(s);
          return;
        }
        std::printf(
            "attention-server: --tls-cert %s: a new certificate (valid until %s) for new "
            "connections\n",
            config_.tls_cert.c_str(), FormatTime(X509_get0_notAfter(files->cert.get())).c_str());
        std::fflush(stdout);
        WarnAboutDates(config_.tls_cert, files->cert.get());
        return;
      }
      if (stop_.WaitForNotificationWithTimeout(kSettle)) return;
      if (StampsNow() != before) continue;  // still being written: read it again
      seen_ = before;
      Refuse(files.status());
      return;
    }
  }

  void Refuse(const absl::Status& problem) {
    g_certificate_reload_failures.fetch_add(1, std::memory_order_relaxed);
    std::fprintf(
        stderr, "attention-server: error: %s: keeping the previous %s\n",
        std::string(problem.message()).c_str(),
        config_.tls_client_ca.empty() ? "certificate and key" : "certificate, key and client CA");
    std::fflush(stderr);
  }

  // Writes `files` as a new generation and points DIR/current at it.
  absl::Status Install(const TlsFiles& files) {
    const std::string name = absl::StrCat("g", generation_ + 1);
    const std::string gen = absl::StrCat(dir_, "/", name);
    std::vector<int> fds;
    auto failed = [&](absl::string_view what) {
      const int err = errno;
      for (int fd : fds) close(fd);
      std::error_code ignored;
      std::filesystem::remove_all(gen, ignored);
      return absl::InternalError(absl::StrCat("cannot ", what, " for the TLS files in ", dir_, " (",
                                              std::strerror(err), ")"));
    };
    if (mkdir(gen.c_str(), 0700) != 0) return failed("make a directory");
    mtime_ = std::max<time_t>(std::time(nullptr), mtime_ + 1);
    const std::pair<const char*, const std::string*> outputs[] = {
        {"cert.pem", &files.cert_pem}, {"key.pem", &files.key_pem}, {"ca.pem", &files.ca_pem}};
    for (const auto& [file, text] : outputs) {
      if (text == &files.ca_pem && config_.tls_client_ca.empty()) continue;
      const int fd = MemoryFile(file, *text);
      if (fd < 0) return failed("make a memory file");
      fds.push_back(fd);
      if (symlink(absl::StrCat("/proc/self/fd/", fd).c_str(),
                  absl::StrCat(gen, "/", file).c_str()) != 0) {
        return failed("make a symbolic link");
      }
    }
    const std::string link = dir_ + "/current.new";
    unlink(link.c_str());
    if (symlink(name.c_str(), link.c_str()) != 0) return failed("make a symbolic link");
    if (rename(link.c_str(), (dir_ + "/current").c_str()) != 0) {
      return failed("swap a symbolic link");
    }
    if (generation_ > 0) {
      std::error_code ignored;
      std::filesystem::remove_all(absl::StrCat(dir_, "/g", generation_), ignored);
    }
    for (int fd : previous_fds_) close(fd);
    previous_fds_ = std::move(current_fds_);
    current_fds_ = std::move(fds);
    ++generation_;
    cert_pem_ = files.cert_pem;
    key_pem_ = files.key_pem;
    ca_pem_ = files.ca_pem;
    return absl::OkStatus();
  }

  // A memory file (0600) holding `text`, with this generation's modification
  // time; its descriptor, or -1 (errno set).
  int MemoryFile(const char* name, const std::string& text) const {
    const int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = write(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    const struct timespec times[2] = {{mtime_, 0}, {mtime_, 0}};
    if (done != text.size() || fchmod(fd, 0600) != 0 || futimens(fd, times) != 0) {
      const int err = errno != 0 ? errno : EIO;
      close(fd);
      errno = err;
      return -1;
    }
    return fd;
  }

  const SecurityConfig config_;
  const std::string dir_;
  absl::Notification stop_;
  std::thread thread_;
  // Written by Start before the thread starts, then only by the thread: not
  // shared, so not locked.
  Stamps seen_ = {};
  std::string cert_pem_, key_pem_, ca_pem_;      // what gRPC is given
  std::vector<int> current_fds_, previous_fds_;  // memory files of gN and g(N-1)
  int generation_ = 0;
  time_t mtime_ = 0;
};

namespace {

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
  absl::StatusOr<std::shared_ptr<CertificateWatcher>> watcher =
      CertificateWatcher::Start(c, *files);
  if (!watcher.ok()) return watcher.status();
  WarnAboutDates(c.tls_cert, files->cert.get());

  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      (*watcher)->KeyPath(), (*watcher)->CertPath(), (*watcher)->CaPath(), kProviderRefreshSeconds);
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
  return ServerSecurity{std::move(creds), std::move(*watcher)};
}

int64_t CertificateReloadFailures() {
  return g_certificate_reload_failures.load(std::memory_order_relaxed);
}

std::string DescribeSecurity(const SecurityConfig& c) {
  std::string s = c.tls_cert.empty() ? "plaintext" : c.tls_client_ca.empty() ? "TLS" : "mutual TLS";
  if (!c.auth_token_file.empty()) s += ", bearer tokens";
  return s;
}

}  // namespace server
}  // namespace attention
