// --model-dir: a directory of models that change while the server runs.
// Every NAME.safetensors in it is model NAME (scripts/export_model.py writes
// such files), loaded at start and again whenever its file changes: on each
// poll (--model-poll-seconds), or at once on SIGHUP (Wake). A file replaced by
// a rename (how an editor, a deploy tool or a Kubernetes volume update writes
// it) is a new file and is picked up; one being written is read only once it
// validates fully (a half-written file fails the check and keeps the old
// version serving, and is tried again when it changes).
//
// A load: the new version is read and prepared (its projection weights'
// packed forms too) beside the old, its bytes reserved in the memory budget
// first (--max-memory-mb: a load that does not fit is refused, "over_budget");
// then the registry swaps it in (server/model_registry.h): calls in flight
// finish on the version they started with, decode sequences keep theirs, and
// the old version's memory (and its reservation) goes when its last user
// ends. A file removed from the directory unloads its model (calls naming it
// then get NOT_FOUND). A failed load logs one line naming the file and the
// reason, once per version of the file.
//
// Names given with --model are not taken from the directory (a file of that
// name is logged and skipped). Hidden files (a leading dot: Kubernetes'
// ..data and its timestamped folders) are skipped.
//
//   ModelDirectory dir({"/models", absl::Seconds(10), &budget}, &registry, observer);
//   absl::Status s = dir.Scan();  // at start: an unreadable directory is an error
//   dir.StartPolling();           // then every 10 s, and dir.Wake() on SIGHUP
#ifndef SERVER_MODEL_DIRECTORY_H_
#define SERVER_MODEL_DIRECTORY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/memory_budget.h"
#include "server/model_registry.h"

namespace attention {
namespace server {

class ModelDirectory {
 public:
  struct Options {
    std::string dir;
    absl::Duration poll = absl::ZeroDuration();  // 0: scans on Wake only
    MemoryBudget* budget = nullptr;              // optional: what loads reserve
  };
  // Told of each change: `result` "loaded" (version, and the version it
  // replaced or 0), "error" or "over_budget" (the old version serves on),
  // "removed" (the version removed).
  using Observer = std::function<void(const std::string& name, const std::string& result,
                                      int64_t version, int64_t previous)>;

  // `models` must outlive this; `reserved` names the --model names.
  ModelDirectory(Options options, ModelRegistry* models, std::set<std::string> reserved,
                 Observer observer);
  ~ModelDirectory();  // stops polling
  ModelDirectory(const ModelDirectory&) = delete;
  ModelDirectory& operator=(const ModelDirectory&) = delete;

  // Loads what is new or changed, unloads what is gone. Errors: the directory
  // cannot be read (nothing changes then). One scan at a time.
  absl::Status Scan() ABSL_LOCKS_EXCLUDED(scan_mu_);
  // The Open Inference Protocol's repository requests: loads `name` from
  // its file now (NotFound without one; the load's error otherwise, the old
  // version then serving on), or unloads it (NotFound when not served from
  // the directory). A model unloaded so stays unloaded, whatever the scans
  // see, until it is loaded on request again.
  absl::Status LoadNow(const std::string& name) ABSL_LOCKS_EXCLUDED(scan_mu_);
  absl::Status Unload(const std::string& name) ABSL_LOCKS_EXCLUDED(scan_mu_);

  // Scans every Options::poll on a thread of its own (and on Wake).
  void StartPolling() ABSL_LOCKS_EXCLUDED(mu_);
  // Scans soon, on the directory's thread (started by the first Wake
  // without polling), which runs at nice 10: loads yield the CPU to calls.
  void Wake() ABSL_LOCKS_EXCLUDED(mu_);

  // The estimated bytes a model file of `file_bytes` takes loaded: its
  // tensors and their prepared copies.
  static int64_t LoadedBytes(int64_t file_bytes) { return 2 * file_bytes; }

 private:
  // What identifies one version of a file.
  struct Stamp {
    int64_t mtime_ns = 0, size = 0, inode = 0, device = 0;
    bool operator==(const Stamp& o) const {
      return mtime_ns == o.mtime_ns && size == o.size && inode == o.inode && device == o.device;
    }
  };
  struct Known {
    Stamp stamp;  // of the file last tried
    bool loaded;  // that file serves (else it failed)
    int64_t version = 0;
  };

  // Loads `path` as `name`; its status (the old version serves on when not OK).
  absl::Status Load(const std::string& name, const std::string& path, const Stamp& stamp)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(scan_mu_);
  // The file of model `name` and its stamp; NotFound when there is none.
  absl::StatusOr<std::pair<std::string, Stamp>> FileOf(const std::string& name) const;
  void Poll() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  ModelRegistry* const models_;
  const std::set<std::string> reserved_;
  const Observer observer_;
  absl::Mutex scan_mu_;
  std::map<std::string, Known> known_ ABSL_GUARDED_BY(scan_mu_);
  std::set<std::string> skipped_ ABSL_GUARDED_BY(scan_mu_);   // logged once
  std::set<std::string> unloaded_ ABSL_GUARDED_BY(scan_mu_);  // by request
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool polling_ ABSL_GUARDED_BY(mu_) = false;
  std::thread poller_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_MODEL_DIRECTORY_H_
