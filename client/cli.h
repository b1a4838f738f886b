// attention-client's commands. main.cc calls RunCli; each command is a
// function of the parsed arguments, so tests can drive them in-process too.
#ifndef CLIENT_CLI_H_
#define CLIENT_CLI_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attention {
namespace client {

// Parsed command line: options with values, boolean switches, the command.
struct CliArgs {
  std::string command;
  std::map<std::string, std::string> values;  // "--heads 8" -> {"heads", "8"}
  std::set<std::string> switches;             // "--causal" -> {"causal"}

  bool Has(const std::string& name) const { return values.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
};

// Exit codes: 0 success, 1 the call failed (status printed), 2 bad usage.
int RunCli(int argc, char** argv);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_CLI_H_
