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
    return absl::InvalidArgumentError("--access-log: cannot open " + path + " for appending: " +
                                      std::strerror(errno));
  }
  return std::unique_ptr<AccessLog>(new AccessLog(file, true, capacity));
}

AccessLog::AccessLog(std::FILE* file, bool owned, size_t capacity)
    : file_(file), owned_(owned), capacity_(capacity), writer_([this] { Write(); }) {}

AccessLog::~AccessLog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  writer_.join();
  if (owned_) std::fclose(file_);
}

void AccessLog::Append(std::string line) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lines_.size() >= capacity_) {
      ++dropped_;
      return;
    }
    lines_.push_back(std::move(line));
  }
  cv_.notify_one();
}

uint64_t AccessLog::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

void AccessLog::Write() {
  std::deque<std::string> batch;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !lines_.empty(); });
    if (lines_.empty()) return;  // stopping, and everything is written
    batch.swap(lines_);
    lock.unlock();
    for (const std::string& line : batch) {
      std::fwrite(line.data(), 1, line.size(), file_);
      std::fputc('\n', file_);
    }
    std::fflush(file_);
    batch.clear();
    lock.lock();
  }
}

}  // namespace server
}  // namespace attention
