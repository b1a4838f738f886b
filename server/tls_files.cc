#include "server/tls_files.h"

#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attention {
namespace server {
namespace {

// How long a read waits for a pipe whose writer has not written yet.
constexpr int kPipeWaitMs = 1000;

}  // namespace

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

namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

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

// Why `cert` is outsideits validity dates now ("" when it is not).
std::string ValidityProblem(X509* cert) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return "the certificate expired on " + FormatTime(X509_get0_notAfter(cert));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return "the certificate is not valid before " + FormatTime(X509_get0_notBefore(cert));
  }
  return "";
}

}  // namespace

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

void WarnAboutDates(const std::string& path, X509* cert) {
  const std::string problem = ValidityProblem(cert);
  if (problem.empty()) return;
  std::fprintf(stderr,
               "attention-server: warning: --tls-cert %s: %s; serving it until it is replaced\n",
               path.c_str(), problem.c_str());
  std::fflush(stderr);
}

}  // namespace server
}  // namespace attention
