// The models a server preloads at start (--model NAME=PATH), by name.
//
// Usage:
//
//   absl::StatusOr<std::unique_ptr<ModelRegistry>> models =
//       ModelRegistry::Load({"demo=models/demo.safetensors"});
//   const Model* m = (*models)->Find("demo");   // nullptr when unknown
//
// Contracts:
// - Immutable after Load: every method may be called from any thread at once.
// - Models are read-only for the life of the registry; the pointers returned
//   stay valid as long as the registry does.
#ifndef SERVER_MODEL_REGISTRY_H_
#define SERVER_MODEL_REGISTRY_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"

namespace attention {
namespace server {

class ModelRegistry {
 public:
  // Loads "NAME=PATH" specs. Errors: InvalidArgument for a malformed spec or
  // a name given twice; the loader's status otherwise; each message names the
  // spec ("--model demo=x.safetensors: ...").
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(const std::vector<std::string>& specs);

  // nullptr when unknown.
  const Model* Find(const std::string& name) const;
  // Every model, ordered by name.
  std::vector<const Model*> All() const;
  // "demo, big" (for error messages); "no models" when empty.
  std::string Names() const;

 private:
  std::map<std::string, std::unique_ptr<const Model>> models_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_MODEL_REGISTRY_H_
