// Transport security and caller authentication for the serving port.
//
// Usage:
//
//   SecurityConfig config;
//   config.tls_cert = "server.pem"; config.tls_key = "server.key";
//   config.tls_client_ca = "ca.pem";           // optional: mutual TLS
//   config.auth_token_file = "tokens";         // optional: bearer tokens
//   absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
//       MakeServerCredentials(config);
//   builder.AddListeningPort(address, *creds);
//
// Contracts:
// - Without tls_cert the port is plaintext (tokens are then refused at start:
//   a bearer token sent in the clear can be read by anyone on the path).
// - Start-up checks every file once and names the flag and the problem
//   (unreadable, not PEM, key not matching the certificate) in one line.
// - Certificates, key and client CA are re-read by gRPC when they change
//   (every kCertificateRefreshSeconds): new connections get the new ones.
// - The token file holds one token a line (blank lines and `#` comments are
//   ignored) and is re-read when its modification time, size or inode change
//   (checked at most once a second, on the next call). A file that cannot be
//   read after a change keeps the previous tokens and says so on stderr.
// - Every call except grpc.health.v1.Health needs `authorization: Bearer T`
//   with T one of the tokens, else UNAUTHENTICATED with a message saying what
//   is missing or wrong. Tokens are compared in constant time (as SHA-256
//   digests) and never logged or echoed.
#ifndef SERVER_SECURITY_H_
#define SERVER_SECURITY_H_

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

// The credentials for the serving port, as described above. Errors:
// InvalidArgument naming the flag (--tls-cert, --tls-key, --tls-client-ca,
// --auth-token-file) and the problem.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityConfig& config);

// "TLS", "mutual TLS" or "plaintext", plus ", bearer tokens" (start-up line).
std::string DescribeSecurity(const SecurityConfig& config);

}  // namespace server
}  // namespace attention

#endif  // SERVER_SECURITY_H_
