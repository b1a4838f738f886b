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
    if (registry->Find(kv.first) != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model ", spec, ": the name '", kv.first, "' is given twice"));
    }
    absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(kv.first, kv.second);
    if (!m.ok()) {
      return absl::Status(m.status().code(),
                          absl::StrCat("--model ", spec, ": ", m.status().message()));
    }
    registry->Put(kv.first, std::move(*m));
  }
  return registry;
}

std::shared_ptr<const Model> ModelRegistry::Find(const std::string& name) const {
  return FindEntry(name).model;
}

ModelRegistry::Entry ModelRegistry::FindEntry(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  return it == models_.end() ? Entry{} : it->second;
}

std::vector<ModelRegistry::Entry> ModelRegistry::All() const {
  absl::MutexLock lock(&mu_);
  std::vector<Entry> all;
  for (const auto& [name, e] : models_) all.push_back(e);
  return all;
}

std::string ModelRegistry::Names() const {
  absl::MutexLock lock(&mu_);
  if (models_.empty()) return "no models";
  std::vector<std::string> names;
  for (const auto& [name, e] : models_) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

int64_t ModelRegistry::Put(const std::string& name, std::shared_ptr<const Model> model) {
  absl::MutexLock lock(&mu_);
  const int64_t version = ++versions_[name];
  models_[name] = Entry{name, std::move(model), version};
  return version;
}

bool ModelRegistry::Remove(const std::string& name) {
  absl::MutexLock lock(&mu_);
  return models_.erase(name) > 0;
}

}  // namespace server
}  // namespace attention
