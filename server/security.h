// Transport security and caller authentication for the serving port.
//
// Usage:
//
//   SecurityConfig config;
//   config.tls_cert = "server.pem"; config.tls_key = "server.key";
//   config.tls_client_ca = "ca.pem";           // optional: mutual TLS
//   config.auth_token_file = "tokens";         // optional: bearer tokens
//   absl::StatusOr<ServerSecurity> security = MakeServerSecurity(config);
//   builder.AddListeningPort(address, security->credentials);
//   ... keep security->certificates until the grpc::Server is destroyed ...
//
// Contracts:
// - Without tls_cert the port is plaintext (tokens are then refused at start:
//   a bearer token sent in the clear can be read by anyone on the path).
// - Every file is read up to 1 MiB (a larger one, /dev/zero, is refused;
//   a pipe is read without waiting for a writer).
// - Start-up checks every file once and names the flag and the problem
//   (unreadable, not PEM, key not matching the certificate) in one line. A
//   certificate outside its validity dates (expired, or not valid yet) is
//   served with a warning line on stderr naming the flag and the date.
// - Rotation: the operator's certificate, key and client CA are checked
//   every kCertificateRefreshSeconds; a changed set that validates as at
//   start-up is handed to gRPC, whose new connections get it. A set that does
//   not (garbage, a certificate for another key, unreadable) is not: the last
//   good one stays, one line on stderr names the flag and the problem
//   ("...: keeping the previous certificate"), and CertificateReloadFailures()
//   counts it. A set written file by file is looked at again shortly before
//   it is called broken. gRPC reads validated copies in a private directory
//   (mkdtemp, files 0600), never the operator's files.
// - The token file holds one token a line (blank lines and `#` comments are
//   ignored) and is re-read when its modification time, size, inode or
//   status change time change (checked at most once a second, on the next
//   call). Start-up refuses a file without tokens. After start-up a change
//   that leaves no token (empty, comments only, unreadable, deleted) means
//   no token is accepted until the file has tokens again: it fails closed,
//   with one line on stderr per change.
// - Every call except grpc.health.v1.Health needs `authorization: Bearer T`
//   with T one of the tokens, else UNAUTHENTICATED with a message saying what
//   is missing or wrong. Tokens are compared in constant time (as SHA-256
//   digests) and never logged or echoed.
#ifndef SERVER_SECURITY_H_
#define SERVER_SECURITY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace attention {
namespace server {

struct SecurityConfig {
  std::string tls_cert;         // PEM certificate chain; empty = plaintext
  std::string tls_key;          // PEM private key of tls_cert
  std::string tls_client_ca;    // PEM CA bundle; set = client certificates required
  std::string auth_token_file;  // empty = no tokens needed
};

inline constexpr unsigned int kCertificateRefreshSeconds = 2;

// Watches the operator's TLS files and hands gRPC the sets that validate
// (see Contracts above); stops and removes its private copies when
// destroyed. Opaque: only its lifetime matters to the caller.
class CertificateWatcher;

struct ServerSecurity {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Non-null with TLS. gRPC serves from its copies: keep it until the
  // grpc::Server using `credentials` is destroyed.
  std::shared_ptr<CertificateWatcher> certificates;
};

// The credentials for the serving port, as described above. Errors:
// InvalidArgument naming the flag (--tls-cert, --tls-key, --tls-client-ca,
// --auth-token-file) and the problem.
absl::StatusOr<ServerSecurity> MakeServerSecurity(const SecurityConfig& config);

// Rotations of the TLS files refused since the process started (every
// watcher together; monotonic: a Prometheus counter).
int64_t CertificateReloadFailures();

// "TLS", "mutual TLS" or "plaintext", plus ", bearer tokens" (start-up line).
std::string DescribeSecurity(const SecurityConfig& config);

}  // namespace server
}  // namespace attention

#endif  // SERVER_SECURITY_H_
