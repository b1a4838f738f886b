#include "client/security.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attention {
namespace client {
namespace {

absl::StatusOr<std::string> ReadFlagFile(const CliArgs& args, const std::string& flag) {
  const std::string path = args.Get(flag);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " ", path, ": cannot read (", std::strerror(errno), ")"));
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The first line that is neither blank nor a # comment.
std::string FirstToken(absl::string_view text) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty() && line[0] != '#') return std::string(line);
  }
  return "";
}

}  // namespace

const OptionTable& SecurityOptions() {
  static const OptionTable kTable = {
      {{"security (every command)",
        {{{"tls"}, "--tls", "TLS, verifying the server against the system's root certificates"},
         {{"tls-ca"}, "--tls-ca PATH", "TLS, verifying the server against this PEM CA bundle"},
         {{"tls-cert", "tls-key"},
          "--tls-cert PATH --tls-key PATH",
          "a client certificate (servers that require mutual TLS)"},
         {{"tls-server-name"},
          "--tls-server-name NAME",
          "the name the server's certificate must carry (default: the target's host)"},
         {{"token-file"},
          "--token-file PATH",
          "send 'authorization: Bearer TOKEN' (the file's first line; needs TLS); the "
          "environment variable ATTENTION_TOKEN does the same on TLS channels"}}}}};
  return kTable;
}

absl::StatusOr<ChannelSecurity> SecurityFromArgs(const CliArgs& args) {
  ChannelSecurity s;
  const std::string tls = args.Get("tls", "false");  // --tls=true|false; plain --tls is a switch
  if (tls != "true" && tls != "false") {
    return absl::InvalidArgumentError("--tls: expected true or false (or --tls alone)");
  }
  s.tls = args.Switch("tls") || tls == "true" || args.Has("tls-ca") || args.Has("tls-cert");
  s.server_name = args.Get("tls-server-name");
  if (args.Has("tls-ca")) {
    absl::StatusOr<std::string> pem = ReadFlagFile(args, "tls-ca");
    if (!pem.ok()) return pem.status();
    s.root_pem = *std::move(pem);
  }
  if (args.Has("tls-cert") != args.Has("tls-key")) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (args.Has("tls-cert")) {
    absl::StatusOr<std::string> cert = ReadFlagFile(args, "tls-cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFlagFile(args, "tls-key");
    if (!key.ok()) return key.status();
    s.cert_chain_pem = *std::move(cert);
    s.private_key_pem = *std::move(key);
  }
  if (args.Has("token-file")) {
    if (!s.tls) {
      return absl::InvalidArgumentError(
          "--token-file needs TLS (--tls or --tls-ca): a token sent in plaintext can be read by "
          "anyone on the path");
    }
    absl::StatusOr<std::string> text = ReadFlagFile(args, "token-file");
    if (!text.ok()) return text.status();
    s.token = FirstToken(*text);
    if (s.token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file ", args.Get("token-file"), ": no token in the file"));
    }
  } else if (const char* env = std::getenv("ATTENTION_TOKEN"); env != nullptr && s.tls) {
    s.token = std::string(absl::StripAsciiWhitespace(env));
  }
  return s;
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(
    const ChannelSecurity& security, grpc::ChannelArguments* channel_args) {
  if (!security.tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = security.root_pem;
  ssl.pem_cert_chain = security.cert_chain_pem;
  ssl.pem_private_key = security.private_key_pem;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(ssl);
  if (!security.server_name.empty()) {
    channel_args->SetSslTargetNameOverride(security.server_name);
  }
  if (!security.token.empty()) {
    creds = grpc::CompositeChannelCredentials(creds, grpc::AccessTokenCredentials(security.token));
  }
  return creds;
}

absl::Status ExplainTlsFailure(const absl::Status& status, const ChannelSecurity& security) {
  if (!security.tls || status.code() != absl::StatusCode::kUnavailable) return status;
  const std::string m = absl::AsciiStrToLower(status.message());
  if (m.find("socket closed") == std::string::npos &&
      m.find("connection reset") == std::string::npos) {
    return status;
  }
  const char* check =
      security.cert_chain_pem.empty()
          ? "the server may require a client certificate (--tls-cert and --tls-key)"
          : "the server may have refused the client certificate (--tls-cert must be signed by a "
            "CA in the server's --tls-client-ca)";
  return absl::Status(
      status.code(),
      absl::StrCat("the TLS connection was closed during the "
                   "handshake: ",
                   check, ", or it does not serve TLS on this port (", status.message(), ")"));
}

}  // namespace client
}  // namespace attention
