// A small command-line parser shared by attention-client and attention-bench:
// "COMMAND --name value --name=value --switch".
#ifndef CLIENT_ARGS_H_
#define CLIENT_ARGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attention {
namespace client {

struct CliArgs {
  std::string command;                        // the first bare word, if any
  std::map<std::string, std::string> values;  // "--heads 8" -> {"heads", "8"}
  std::set<std::string> switches;             // "--causal" -> {"causal"}

  bool Has(const std::string& name) const { return values.count(name) > 0; }
  bool Switch(const std::string& name) const { return switches.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // Comma-separated integers ("1,2,4,8"); `fallback` when absent.
  absl::StatusOr<std::vector<double>> GetList(const std::string& name,
                                              std::vector<double> fallback) const;
};

// Parses argv[1..]. Names in `switches` take no value; every other option
// takes one. Errors: InvalidArgument ("--heads needs a value", a second bare word).
absl::StatusOr<CliArgs> ParseArgs(int argc, char** argv, const std::set<std::string>& switches);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_ARGS_H_
