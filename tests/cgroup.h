// A memory cgroup a test makes, as a container or a systemd unit with
// MemoryMax= gives a server: v1 (a hybrid host's /sys/fs/cgroup/memory) or v2,
// whichever the machine has, made as a child of the test process's own group
// so that only what the test moves into it is limited.
//
//   absl::StatusOr<std::unique_ptr<MemoryCgroup>> g = MemoryCgroup::Create(1 << 30);
//   if (!g.ok()) GTEST_SKIP() << g.status();   // not root, no memory controller
//   ServerProcess server(flags, {}, (*g)->dir());
//   ... (*g)->PeakBytes(), (*g)->OomKills() ...
#ifndef TESTS_CGROUP_H_
#define TESTS_CGROUP_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace attention {
namespace testing {

class MemoryCgroup {
 public:
  // A new group with `limit_bytes` (swap included on v1 where it can be set).
  // Errors: Unavailable when the machine or the user cannot make one.
  static absl::StatusOr<std::unique_ptr<MemoryCgroup>> Create(int64_t limit_bytes);
  ~MemoryCgroup();  // removes the group (its processes must have ended)

  const std::string& dir() const { return dir_; }
  bool v2() const { return v2_; }
  // The most memory the group has used (v1 max_usage_in_bytes; v2 memory.peak
  // where the kernel has it), -1 when unknown.
  int64_t PeakBytes() const;
  // Processes the kernel's OOM killer ended in the group.
  int64_t OomKills() const;

 private:
  MemoryCgroup(std::string dir, bool v2) : dir_(std::move(dir)), v2_(v2) {}
  std::string dir_;
  bool v2_;
};

}  // namespace testing
}  // namespace attention

#endif  // TESTS_CGROUP_H_
