// A small command-line parser shared by attention-client and attention-bench:
// "COMMAND --name value --name=value --switch", and the parsers of the option
// values both tools take (--weights, --wire-dtype), so each is spelled once.
//
//   absl::StatusOr<CliArgs> args = ParseArgs(argc, argv, {"causal", "help"});
//   if (absl::Status s = args->CheckKnown({"heads", "weights"}); !s.ok()) ...  // usage
//   absl::StatusOr<WeightsMode> w = ParseWeightsMode(args->Get("weights", "none"));
//
// Errors are InvalidArgument with a message that starts with the flag
// ("--weights avarage: expected none, average or per-head"): the tools print
// it and exit 2 (bad usage).
#ifndef CLIENT_ARGS_H_
#define CLIENT_ARGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/attention.h"  // WeightsMode
#include "core/tensor.h"     // DType

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
  // InvalidArgument "unknown option --NAME" for the first option in `values`
  // not in `known`. An unknown switch lands there too ("--x 3" takes "3" as
  // its value), or fails ParseArgs when nothing follows it.
  absl::Status CheckKnown(const std::set<std::string>& known) const;
};

// A tool's options as its usage shows them, in sections: each option is
// declared once here, and both the usage text and the set of names
// CheckKnown takes come from the table.
//
//   const OptionTable kOptions = {{"how to send", {
//       {{"duration"}, "--duration SECONDS", "measured time per level (default 10)"}}}};
//   args.CheckKnown(kOptions.Names());   std::fputs(kOptions.Usage().c_str(), stdout);
struct OptionDoc {
  std::vector<std::string> names;  // the option names it declares ("tls-cert", "tls-key")
  std::string synopsis;            // how it is typed ("--tls-cert PATH --tls-key PATH")
  std::string help;                // what it does, with its default
};
struct OptionTable {
  std::vector<std::pair<std::string, std::vector<OptionDoc>>> sections;  // title, options

  // "title:\n  synopsis   help\n..." for every section, help wrapped under
  // a 28-column synopsis.
  std::string Usage() const;
  // Every declared name.
  std::set<std::string> Names() const;
  // True when `name` is declared.
  bool Declares(const std::string& name) const { return Names().count(name) > 0; }
};

// Parses argv[1..]. Names in `switches` take no value; every other option
// takes one. Errors: InvalidArgument ("--heads needs a value", a second bare word).
absl::StatusOr<CliArgs> ParseArgs(int argc, char** argv, const std::set<std::string>& switches);

// --weights: "none", "average" (or "averaged") or "per-head".
absl::StatusOr<WeightsMode> ParseWeightsMode(absl::string_view value);
// --wire-dtype: "float32", "float16" or "bfloat16".
absl::StatusOr<DType> ParseWireDType(absl::string_view value);
// --precision: "float32" or "bfloat16".
absl::StatusOr<Precision> ParsePrecision(absl::string_view value);
// "float32" or "bfloat16", as --precision spells it.
const char* PrecisionName(Precision precision);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_ARGS_H_
