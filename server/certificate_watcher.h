// Serves TLS from the operator's certificate files while refusing a broken
// rotation. gRPC's FileWatcherCertificateProvider serves whatever the files
// hold, and a garbage certificate renamed into place would fail every new
// connection while health says SERVING. The watcher checks the operator's
// files every kCertificateRefreshSeconds and hands gRPC only a set that
// validates as at start-up (ReadTlsFiles); a set that does not is refused
// with one line on stderr and counted (CertificateReloadFailures), and the
// last good set keeps serving.
//
//   absl::StatusOr<WatchedCertificates> w = WatchCertificates(config, files);
//   FileWatcherCertificateProvider provider(w->key_path, w->cert_path, ...);
//   ... keep w->watcher until the grpc::Server is destroyed ...
#ifndef SERVER_CERTIFICATE_WATCHER_H_
#define SERVER_CERTIFICATE_WATCHER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/security.h"
#include "server/tls_files.h"

namespace attention {
namespace server {

struct WatchedCertificates {
  // Stops watching and removes the private copies when the last owner goes.
  std::shared_ptr<CertificateWatcher> watcher;
  // The private copies, for gRPC's provider (ca_path empty without a client CA).
  std::string cert_path, key_path, ca_path;
};

// Copies `files` (validated from `config`) into a new private directory
// (under $TMPDIR or /tmp) and starts watching `config`'s files.
// InvalidArgument naming the flag when the copies cannot be made.
absl::StatusOr<WatchedCertificates> WatchCertificates(const SecurityConfig& config,
                                                      const TlsFiles& files);

}  // namespace server
}  // namespace attention

#endif  // SERVER_CERTIFICATE_WATCHER_H_
