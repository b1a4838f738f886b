// The access log: lines (one JSON object each, made by the caller) appended
// to a file or stdout by a writer thread of its own, so that a call never
// waits for the disk. Lines wait in a bounded buffer; when it is full (the
// disk or the pipe is slower than the calls) a line is dropped and counted,
// never waited for.
//
//   absl::StatusOr<std::unique_ptr<AccessLog>> log = AccessLog::Open("-", 4096);
//   (*log)->Append(R"({"rpc":"Attention","code":"OK"})");
//   (*log)->dropped();   // lines lost to a full buffer so far
//
// Thread-safe. The destructor writes what is buffered and stops the thread.
#ifndef SERVER_ACCESS_LOG_H_
#define SERVER_ACCESS_LOG_H_

#include <cstdint>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace attention {
namespace server {

class AccessLog {
 public:
  // `path` "-" is stdout; a file is opened for appending. InvalidArgument
  // naming the path when it cannot be opened. At most `capacity` lines wait.
  static absl::StatusOr<std::unique_ptr<AccessLog>> Open(const std::string& path, size_t capacity);
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Queues `line` (without its newline); drops it when the buffer is full.
  // Never blocks on I/O.
  void Append(std::string line) ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t dropped() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  AccessLog(std::FILE* file, bool owned, size_t capacity);
  // The writer thread: writes the lines outside the lock.
  void Write() ABSL_LOCKS_EXCLUDED(mu_);

  std::FILE* const file_;  // only the writer thread writes to it
  const bool owned_;
  const size_t capacity_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // a line was queued, or stopping_
  std::deque<std::string> lines_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;
};

}  // namespace server
}  // namespace attention

#endif  // SERVER_ACCESS_LOG_H_
