// The operator's files, read with bounds: ReadBounded reads any file the
// server is given (at most 1 MiB; /dev/zero, a huge file and a pipe without
// a writer are refused rather than read until the process dies), and
// ReadTlsFiles reads and validates a certificate, its key and a client CA as
// start-up and each rotation do (each PEM parses, the key matches the
// certificate). Errors are InvalidArgument "FLAG PATH: problem".
//
//   absl::StatusOr<TlsFiles> files = ReadTlsFiles(config);
//   if (!files.ok()) return files.status();   // names --tls-cert, --tls-key...
//   WarnAboutDates(config.tls_cert, files->cert.get());
#ifndef SERVER_TLS_FILES_H_
#define SERVER_TLS_FILES_H_

#include <openssl/x509.h>
#include <sys/stat.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/security.h"

namespace attention {
namespace server {

inline constexpr size_t kMaxFileBytes = size_t{1} << 20;

// What identifies a version of a file: an error (errno of stat, 0 if none),
// then device, inode, size, modification and status change times.
using FileStamp = std::array<int64_t, 8>;
FileStamp StampOf(const struct stat& st);
FileStamp StampOfPath(const std::string& path);

struct FileContents {
  std::string text;
  FileStamp stamp;  // of what was read
};

// The contents of `path`, at most kMaxFileBytes: a larger regular file is
// refused by its size, anything else (a device such as /dev/zero, a pipe) by
// reading one byte past the limit. Opened non-blocking so that a pipe without
// a writer reads as empty; a pipe with a silent writer waits a second.
// InvalidArgument "FLAG PATH: problem".
absl::StatusOr<FileContents> ReadBounded(const std::string& path, absl::string_view flag);

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

// The operator's certificate, key and client CA, as read and checked at
// start-up and at each rotation.
struct TlsFiles {
  std::string cert_pem;
  std::string key_pem;
  std::string ca_pem;  // empty without --tls-client-ca
  X509Ptr cert;        // the first certificate of cert_pem
  std::array<FileStamp, 3> stamps = {};
};

// Reads and validates the TLS files of `config`: each PEM parses, the key
// matches the certificate. InvalidArgument naming the flag and the problem.
absl::StatusOr<TlsFiles> ReadTlsFiles(const SecurityConfig& config);

// "2027-01-31 12:00:00 UTC".
std::string FormatTime(const ASN1_TIME* t);

// One warning line on stderr when `cert` is outside its validity dates.
void WarnAboutDates(const std::string& path, X509* cert);

}  // namespace server
}  // namespace attention

#endif  // SERVER_TLS_FILES_H_
