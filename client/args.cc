#include "client/args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attention {
namespace client {

std::string CliArgs::Get(const std::string& name, const std::string& fallback) const {
  auto it = values.find(name);
  return it == values.end() ? fallback : it->second;
}

absl::StatusOr<int64_t> CliArgs::GetInt(const std::string& name, int64_t fallback) const {
  if (!Has(name)) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " ", Get(name), ": not an integer"));
  }
  return v;
}

absl::StatusOr<double> CliArgs::GetDouble(const std::string& name, double fallback) const {
  if (!Has(name)) return fallback;
  double v;
  if (!absl::SimpleAtod(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " ", Get(name), ": not a number"));
  }
  return v;
}

absl::StatusOr<std::vector<double>> CliArgs::GetList(const std::string& name,
                                                     std::vector<double> fallback) const {
  if (!Has(name)) return fallback;
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(Get(name), ',', absl::SkipEmpty())) {
    double v;
    if (!absl::SimpleAtod(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " ", Get(name), ": expected numbers separated by commas"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, ": empty list"));
  return out;
}

absl::Status CliArgs::CheckKnown(const std::set<std::string>& known) const {
  for (const auto& [name, value] : values) {
    if (!known.count(name)) return absl::InvalidArgumentError("unknown option --" + name);
  }
  return absl::OkStatus();
}

std::string OptionTable::Usage() const {
  constexpr size_t kIndent = 28, kWidth = 100;
  std::string out;
  for (const auto& [title, options] : sections) {
    absl::StrAppend(&out, out.empty() ? "" : "\n", title, ":\n");
    for (const OptionDoc& o : options) {
      std::string line = absl::StrCat("  ", o.synopsis);
      line += line.size() + 2 <= kIndent ? std::string(kIndent - line.size(), ' ')
                                         : "\n" + std::string(kIndent, ' ');
      size_t column = kIndent;
      bool first = true;
      for (absl::string_view word : absl::StrSplit(o.help, ' ', absl::SkipEmpty())) {
        if (!first && column + 1 + word.size() > kWidth) {
          absl::StrAppend(&line, "\n", std::string(kIndent, ' '));
          column = kIndent;
        } else if (!first) {
          line += ' ';
          ++column;
        }
        absl::StrAppend(&line, word);
        column += word.size();
        first = false;
      }
      absl::StrAppend(&out, line, "\n");
    }
  }
  return out;
}

std::set<std::string> OptionTable::Names() const {
  std::set<std::string> names;
  for (const auto& section : sections) {
    for (const OptionDoc& o : section.second) names.insert(o.names.begin(), o.names.end());
  }
  return names;
}

absl::StatusOr<CliArgs> ParseArgs(int argc, char** argv, const std::set<std::string>& switches) {
  CliArgs args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      if (!args.command.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
      }
      args.command = a;
      continue;
    }
    a = a.substr(2);
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      args.values[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (switches.count(a)) {
      args.switches.insert(a);
    } else if (i + 1 < argc) {
      args.values[a] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", a, " needs a value"));
    }
  }
  return args;
}

absl::StatusOr<WeightsMode> ParseWeightsMode(absl::string_view value) {
  if (value == "none") return WeightsMode::kNone;
  if (value == "average" || value == "averaged") return WeightsMode::kAveraged;
  if (value == "per-head") return WeightsMode::kPerHead;
  return absl::InvalidArgumentError(
      absl::StrCat("--weights ", value, ": expected none, average or per-head"));
}

absl::StatusOr<DType> ParseWireDType(absl::string_view value) {
  if (value == "float32") return DType::kFloat32;
  if (value == "float16") return DType::kFloat16;
  if (value == "bfloat16") return DType::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("--wire-dtype ", value, ": expected float32, float16 or bfloat16"));
}

absl::StatusOr<Precision> ParsePrecision(absl::string_view value) {
  if (value == "float32") return Precision::kFloat32;
  if (value == "bfloat16") return Precision::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("--precision ", value, ": expected float32 or bfloat16"));
}

const char* PrecisionName(Precision precision) {
  return precision == Precision::kBFloat16 ? "bfloat16" : "float32";
}

}  // namespace client
}  // namespace attention
