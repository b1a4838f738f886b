#include "server/access_log.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"

namespace attention {
namespace server {

absl::StatusOr<std::unique_ptr<AccessLog>> AccessLog::Open(const std::string& path,
                                                           size_t capacity) {
  if (path == "-") return std::unique_ptr<AccessLog>(new AccessLog(stdout, false, capacity));
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (file == nullptr) {
    return absl::InvalidArgumentError("--access-log: cannot open " + path +
                                      " for appending: " + std::strerror(errno));
  }
  return std::unique_ptr<AccessLog>(new AccessLog(file, true, capacity));
}

AccessLog::AccessLog(std::FILE* file, bool owned, size_t capacity)
    : file_(file), owned_(owned), capacity_(capacity), writer_([this] { Write(); }) {}

AccessLog::~AccessLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.Signal();
  writer_.join();
  if (owned_) std::fclose(file_);
}

void AccessLog::Append(std::string line) {
  {
    absl::MutexLock lock(&mu_);
    if (lines_.size() >= capacity_) {
      ++dropped_;
      return;
    }
    lines_.push_back(std::move(line));
  }
  cv_.Signal();
}

uint64_t AccessLog::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

void AccessLog::Write() {
  std::deque<std::string> batch;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && lines_.empty()) cv_.Wait(&mu_);
      if (lines_.empty()) return;  // stopping, and everything is written
      batch.swap(lines_);
    }
    for (const std::string& line : batch) {
      std::fwrite(line.data(), 1, line.size(), file_);
      std::fputc('\n', file_);
    }
    std::fflush(file_);
    batch.clear();
  }
}

}  // namespace server
}  // namespace attention
