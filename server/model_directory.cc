#include "server/model_directory.h"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attention {
namespace server {
namespace {

constexpr char kSuffix[] = ".safetensors";

// A model name a file may give: letters, digits, '.', '_', '-', at most 256.
bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 256 || name[0] == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void Log(const std::string& line) {
  std::printf("attention-server: %s\n", line.c_str());
  std::fflush(stdout);
}

// A loaded model with its share of the memory budget: both go when the last
// holder of the model lets go.
struct Held {
  explicit Held(MemoryBudget* budget) : reservation(budget) {}
  Reservation reservation;
  std::unique_ptr<const Model> model;
};

}  // namespace

ModelDirectory::ModelDirectory(Options options, ModelRegistry* models,
                               std::set<std::string> reserved, Observer observer)
    : options_(std::move(options)),
      models_(models),
      reserved_(std::move(reserved)),
      observer_(std::move(observer)) {}

ModelDirectory::~ModelDirectory() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (poller_.joinable()) poller_.join();
}

absl::Status ModelDirectory::Scan() {
  absl::MutexLock lock(&scan_mu_);
  DIR* dir = opendir(options_.dir.c_str());
  if (dir == nullptr) {
    return absl::NotFoundError(absl::StrCat("--model-dir ", options_.dir, ": cannot be read"));
  }
  std::vector<std::string> files;
  while (const dirent* e = readdir(dir)) files.emplace_back(e->d_name);
  closedir(dir);
  std::set<std::string> present;
  for (const std::string& file : files) {
    if (file.empty() || file[0] == '.' || !absl::EndsWith(file, kSuffix)) continue;
    const std::string name = file.substr(0, file.size() - (sizeof(kSuffix) - 1));
    const std::string path = options_.dir + "/" + file;
    if (!ValidName(name) || reserved_.count(name) > 0) {
      if (skipped_.insert(name).second) {
        Log(absl::StrCat("--model-dir: ", path, ": skipped (",
                         reserved_.count(name) > 0 ? "a --model has that name"
                                                   : "a model name is letters, digits, . _ -",
                         ")"));
      }
      continue;
    }
    absl::StatusOr<std::pair<std::string, Stamp>> found = FileOf(name);
    if (!found.ok()) continue;  // gone meanwhile
    present.insert(name);
    if (unloaded_.count(name) > 0) continue;  // until loaded on request
    auto known = known_.find(name);
    if (known != known_.end() && known->second.stamp == found->second) continue;  // tried
    Load(name, path, found->second).IgnoreError();                                // logged, counted
  }
  for (auto it = known_.begin(); it != known_.end();) {
    if (present.count(it->first) > 0) {
      ++it;
      continue;
    }
    if (it->second.version > 0 && models_->Remove(it->first)) {
      Log(absl::StrCat("model ", it->first, ": its file is gone: unloaded (version ",
                       it->second.version, "; calls in flight finish on it)"));
      if (observer_) observer_(it->first, "removed", it->second.version, 0);
    }
    it = known_.erase(it);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<std::string, ModelDirectory::Stamp>> ModelDirectory::FileOf(
    const std::string& name) const {
  const std::string path = absl::StrCat(options_.dir, "/", name, kSuffix);
  struct stat st {};
  if (!ValidName(name) || reserved_.count(name) > 0 || stat(path.c_str(), &st) != 0 ||
      !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrCat("model_name: no file ", path.substr(0, 300), " in --model-dir"));
  }
  return std::make_pair(
      path, Stamp{static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                  static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_ino),
                  static_cast<int64_t>(st.st_dev)});
}

absl::Status ModelDirectory::LoadNow(const std::string& name) {
  absl::MutexLock lock(&scan_mu_);
  absl::StatusOr<std::pair<std::string, Stamp>> found = FileOf(name);
  if (!found.ok()) return found.status();
  unloaded_.erase(name);
  return Load(name, found->first, found->second);
}

absl::Status ModelDirectory::Unload(const std::string& name) {
  absl::MutexLock lock(&scan_mu_);
  auto known = known_.find(name);
  if (known == known_.end() || known->second.version == 0 || !models_->Remove(name)) {
    return absl::NotFoundError(
        absl::StrCat("model_name: '", name.substr(0, 256), "' is not served from --model-dir"));
  }
  Log(absl::StrCat("model ", name, ": unloaded on request (version ", known->second.version,
                   "; calls in flight finish on it)"));
  if (observer_) observer_(name, "removed", known->second.version, 0);
  known->second.version = 0;
  unloaded_.insert(name);
  return absl::OkStatus();
}

absl::Status ModelDirectory::Load(const std::string& name, const std::string& path,
                                  const Stamp& stamp) {
  Known& known = known_[name];
  known.stamp = stamp;
  const std::string keeps = known.version > 0
                                ? absl::StrCat("; version ", known.version, " keeps serving")
                                : "; not served";
  auto held = std::make_shared<Held>(options_.budget);
  const int64_t bytes = LoadedBytes(stamp.size);
  if (absl::Status s = held->reservation.Add(bytes); !s.ok()) {
    Log(absl::StrCat("model ", name, ": ", path, ": needs about ", (bytes >> 20) + 1,
                     " MiB loaded, over what --max-memory-mb has free (", s.message(), ")", keeps));
    if (observer_) observer_(name, "over_budget", known.version, 0);
    return absl::ResourceExhaustedError(
        absl::StrCat("model ", name, ": needs about ", (bytes >> 20) + 1,
                     " MiB loaded, more than --max-memory-mb has free", keeps));
  }
  absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel(name, path);
  if (!m.ok()) {
    Log(absl::StrCat("model ", name, ": ", path, ": ", m.status().message(), keeps));
    if (observer_) observer_(name, "error", known.version, 0);
    return absl::Status(m.status().code(), absl::StrCat(path, ": ", m.status().message(), keeps));
  }
  held->model = std::move(*m);
  const int64_t previous = known.version;
  known.version = models_->Put(name, std::shared_ptr<const Model>(held, held->model.get()));
  Log(absl::StrCat("model ", name, ": version ", known.version, " loaded from ", path,
                   previous > 0 ? absl::StrCat(" (version ", previous,
                                               " serves its calls in "
                                               "flight, then goes)")
                                : ""));
  if (observer_) observer_(name, "loaded", known.version, previous);
  return absl::OkStatus();
}

void ModelDirectory::StartPolling() {
  absl::MutexLock lock(&mu_);
  if (polling_ || options_.poll <= absl::ZeroDuration()) return;
  polling_ = true;
  poller_ = std::thread([this] { Poll(); });
}

void ModelDirectory::Wake() {
  {
    absl::MutexLock lock(&mu_);
    if (!polling_ && options_.poll <= absl::ZeroDuration()) {  // a thread for the wakes
      polling_ = true;
      poller_ = std::thread([this] { Poll(); });
    }
    if (polling_) {
      wake_ = true;
      return;
    }
  }
  if (absl::Status s = Scan(); !s.ok()) Log(std::string(s.message()));
}

void ModelDirectory::Poll() {
  // Loads yield the CPU to the calls (nice 10 for this thread alone; not
  // SCHED_IDLE, which starves it while it holds the kernel's memory-map lock
  // that the calls' page faults then wait for).
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || wake_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), options_.poll > absl::ZeroDuration()
                                                        ? options_.poll
                                                        : absl::InfiniteDuration());
      if (stop_) return;
      wake_ = false;
    }
    if (absl::Status s = Scan(); !s.ok()) Log(std::string(s.message()));
  }
}

}  // namespace server
}  // namespace attention
