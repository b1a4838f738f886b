// The attention-server command line. Every flag is declared once, in one
// table that binds it to a field of ServerOptions (whose initializers are the
// defaults), gives its group, its range and its help; parsing, the range
// checks and --help are all generated from that table.
//
//   absl::StatusOr<ServerOptions> options = ParseServerFlags(argc, argv);
//   if (!options.ok()) { /* print options.status().message(): one line */ }
//   std::fputs(ServerHelp().c_str(), stdout);   // for --help
//
// Flags are spelled with dashes (--max-queue 8, --max-queue=8; -max-queue and
// --max_queue are read the same); booleans take
// --reflection, --reflection=false; --model may be repeated (and takes
// comma-separated lists).
#ifndef SERVER_FLAGS_H_
#define SERVER_FLAGS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/server.h"

namespace attention {
namespace server {

// Parses argv[1..] over the defaults. InvalidArgument naming the flag at
// fault: "unknown flag --x", "--workers: not an integer: 'two'", "--workers
// needs a value", and the range checks of ValidateServerOptions.
absl::StatusOr<ServerOptions> ParseServerFlags(int argc, char** argv);

// Checks every flag's value against its range, one flag at a time: the first
// out-of-range one gives InvalidArgument "--workers: must be at least 1, got
// 0". Used by ParseServerFlags and by Server::Start (options set in code).
absl::Status ValidateServerOptions(const ServerOptions& options);

// True when argv asks for the help text (--help, -h).
bool WantsHelp(int argc, char** argv);

// The --help text, grouped by concern, each flag with its default.
std::string ServerHelp();

}  // namespace server
}  // namespace attention

#endif  // SERVER_FLAGS_H_
