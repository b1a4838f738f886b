// The models a server serves, by name: those of --model NAME=PATH, loaded at
// start, and those of --model-dir (server/model_directory.h), which come,
// change and go while the server runs.
//
// Usage:
//
//   absl::StatusOr<std::unique_ptr<ModelRegistry>> models =
//       ModelRegistry::Load({"demo=models/demo.safetensors"});
//   std::shared_ptr<const Model> m = (*models)->Find("demo");   // null when unknown
//   ... m->weights() stay valid while `m` is held, whatever happens to "demo" ...
//
// Contracts:
// - Thread-safe: every method may be called from any thread at once.
// - Each name has a version, a counter that increases with each model put
//   under it (1 for the first). Put swaps a name's model atomically: a caller
//   that found the old one keeps it (and its weights) for as long as it holds
//   the pointer; the old model is freed when its last holder lets go.
#ifndef SERVER_MODEL_REGISTRY_H_
#define SERVER_MODEL_REGISTRY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/model.h"

namespace attention {
namespace server {

class ModelRegistry {
 public:
  struct Entry {
    std::string name;
    std::shared_ptr<const Model> model;
    int64_t version = 0;
  };

  // Loads "NAME=PATH" specs. Errors: InvalidArgument for a malformed spec or
  // a name given twice; the loader's status otherwise; each message names the
  // spec ("--model demo=x.safetensors: ...").
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Load(const std::vector<std::string>& specs);

  // The model under `name` now; null when unknown.
  std::shared_ptr<const Model> Find(const std::string& name) const ABSL_LOCKS_EXCLUDED(mu_);
  // The same with its version (model null when unknown).
  Entry FindEntry(const std::string& name) const ABSL_LOCKS_EXCLUDED(mu_);
  // Every model, ordered by name.
  std::vector<Entry> All() const ABSL_LOCKS_EXCLUDED(mu_);
  // "demo, big" (for error messages); "no models" when empty.
  std::string Names() const ABSL_LOCKS_EXCLUDED(mu_);

  // Puts `model` under `name` (a new name, or a new version of one); returns
  // the version it got.
  int64_t Put(const std::string& name, std::shared_ptr<const Model> model) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes `name` (its holders keep their model); false when unknown.
  bool Remove(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> models_ ABSL_GUARDED_BY(mu_);
  // The last version each name had (kept after a removal: a name that comes
  // back continues its count).
  std::map<std::string, int64_t> versions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_MODEL_REGISTRY_H_
