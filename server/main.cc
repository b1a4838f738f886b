// attention-server: serves multi-head attention over gRPC. The flags are
// declared in server/flags.cc; the server itself is server/server.h.
#include <cstdio>
#include <string>

#include "server/flags.h"
#include "server/server.h"

int main(int argc, char** argv) {
  if (attention::server::WantsHelp(argc, argv)) {
    std::fputs(attention::server::ServerHelp().c_str(), stdout);
    return 0;
  }
  absl::StatusOr<attention::server::ServerOptions> options =
      attention::server::ParseServerFlags(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "attention-server: error: %s (attention-server --help lists the flags)\n",
                 std::string(options.status().message()).c_str());
    return 1;
  }
  return attention::server::RunServer(*options);
}
