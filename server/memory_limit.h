// The memory limit this process runs under, wherever it runs: physical
// memory, and every cgroup memory limit on the way from the process's own
// group up to the root of the hierarchy it can see, v2 (memory.max) or v1
// (memory.limit_in_bytes), found through /proc/self/cgroup and
// /proc/self/mountinfo. A container sees its own group as the root; a
// systemd unit with MemoryMax=, or a group a supervisor made, is a sub-path
// named in /proc/self/cgroup: both are found. The smallest limit wins, as
// the JVM's container support and Go's memory-limit libraries take it.
//
//   MemoryLimit limit = FindMemoryLimit();
//   printf("%lld MiB (%s)\n", limit.bytes >> 20, limit.source.c_str());
#ifndef SERVER_MEMORY_LIMIT_H_
#define SERVER_MEMORY_LIMIT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace attention {
namespace server {

struct MemoryLimit {
  int64_t bytes = 0;
  // Where it came from: "physical memory", or the limit file
  // ("cgroup v1 /sys/fs/cgroup/memory/a/b/memory.limit_in_bytes").
  std::string source;
};

// The tightest limit of this process (never more than physical memory).
MemoryLimit FindMemoryLimit();

// The same from given inputs (for tests): the text of /proc/self/cgroup and
// /proc/self/mountinfo, physical memory, and a reader of a limit file (the
// number in it; nullopt when absent, unreadable or "max").
MemoryLimit FindMemoryLimit(const std::string& proc_cgroup, const std::string& mountinfo,
                            int64_t physical_bytes,
                            const std::function<std::optional<int64_t>(const std::string&)>& read);

}  // namespace server
}  // namespace attention

#endif  // SERVER_MEMORY_LIMIT_H_
