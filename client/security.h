// How a client proves who it talks to and who it is: TLS (server
// verification, optionally a client certificate for mutual TLS) and a bearer
// token, from the flags every attention-client command shares.
//
//   absl::StatusOr<ChannelSecurity> security = SecurityFromArgs(args);
//   auto channel = AttentionClient::Connect(target, limit, false, *security);
//
// Flags: --tls (verify the server against the system's roots), --tls-ca PATH
// (against this CA instead; implies --tls), --tls-cert PATH --tls-key PATH
// (client certificate), --tls-server-name NAME (the name the server's
// certificate must carry, when the target's host is not it), --token-file
// PATH (first non-comment line), or the environment variable
// ATTENTION_TOKEN. A token travels only over TLS: --token-file without TLS
// is an error, and ATTENTION_TOKEN is not sent on plaintext channels.
#ifndef CLIENT_SECURITY_H_
#define CLIENT_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/args.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace attention {
namespace client {

struct ChannelSecurity {
  bool tls = false;
  std::string root_pem;         // empty: the system's roots
  std::string cert_chain_pem;   // client certificate (mutual TLS)
  std::string private_key_pem;  // its key
  std::string server_name;      // overrides the target's host for verification
  std::string token;            // sent as "authorization: Bearer TOKEN"
};

// Reads the flags above (and ATTENTION_TOKEN). InvalidArgument naming the
// flag for an unreadable file, a certificate without its key, or a token
// file without TLS.
absl::StatusOr<ChannelSecurity> SecurityFromArgs(const CliArgs& args);

// The channel credentials for `security`; sets the server-name override in
// `channel_args` when asked for.
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(
    const ChannelSecurity& security, grpc::ChannelArguments* channel_args);

// The flags above, as every command's usage shows them and accepts them.
const OptionTable& SecurityOptions();

// Help text for the flags above, for the tools' usage messages.

// A call's failure, explained for a TLS channel: gRPC reports a server that
// closes the connection during the handshake (it refused the client's
// certificate, or wanted one and got none; or it does not speak TLS) only as
// UNAVAILABLE "Socket closed" or "Connection reset". Other statuses, and
// plaintext channels, are returned as they are.
absl::Status ExplainTlsFailure(const absl::Status& status, const ChannelSecurity& security);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_SECURITY_H_
