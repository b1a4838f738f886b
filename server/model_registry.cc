#include "server/model_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace attention {
namespace server {

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Load(
    const std::vector<std::string>& specs) {
  auto registry = std::make_unique<ModelRegistry>();
  for (const std::string& spec : specs) {
    std::pair<std::string, std::string> kv = absl::StrSplit(spec, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--model ", spec, ": expected NAME=PATH (e.g. demo=models/demo.safetensors)"));
    }
    if (registry->models_.count(kv.first)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model ", spec, ": the name '", kv.first, "' is given twice"));
    }
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(kv.first, kv.second);
    if (!m.ok()) {
      return absl::Status(m.status().code(),
                          absl::StrCat("--model ", spec, ": ", m.status().message()));
    }
    registry->models_.emplace(kv.first, std::move(*m));
  }
  return registry;
}

const Model* ModelRegistry::Find(const std::string& name) const {
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second.get();
}

std::vector<const Model*> ModelRegistry::All() const {
  std::vector<const Model*> all;
  for (const auto& [name, m] : models_) all.push_back(m.get());
  return all;
}

std::string ModelRegistry::Names() const {
  if (models_.empty()) return "no models";
  std::vector<std::string> names;
  for (const auto& [name, m] : models_) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

}  // namespace server
}  // namespace attention
