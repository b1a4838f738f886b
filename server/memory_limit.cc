#include "server/memory_limit.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace attention {
namespace server {
namespace {

// A cgroup hierarchy this process is in: where it is mounted, the cgroup
// path the mount shows as its root, and the process's own group in it.
struct Hierarchy {
  bool v2 = false;
  std::string mount_point;
  std::string mount_root;
  std::string group;
};

// The memory hierarchies of /proc/self/mountinfo, each with the process's
// group from /proc/self/cgroup ("0::/path" for v2, "N:...memory...:/path" for
// v1).
std::vector<Hierarchy> MemoryHierarchies(const std::string& proc_cgroup,
                                         const std::string& mountinfo) {
  std::string v1_group, v2_group;
  bool has_v2 = false;
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty()) {
      v2_group = std::string(f[2]);
      has_v2 = true;
    }
    for (absl::string_view controller : absl::StrSplit(f[1], ',')) {
      if (controller == "memory") v1_group = std::string(f[2]);
    }
  }
  std::vector<Hierarchy> found;
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n', absl::SkipEmpty())) {
    // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
    const std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    size_t dash = 0;
    while (dash < f.size() && f[dash] != "-") ++dash;
    if (f.size() < 5 || dash + 3 >= f.size()) continue;
    Hierarchy h;
    h.mount_root = std::string(f[3]);
    h.mount_point = std::string(f[4]);
    const absl::string_view type = f[dash + 1];
    if (type == "cgroup2" && has_v2) {
      h.v2 = true;
      h.group = v2_group;
    } else if (type == "cgroup" && !v1_group.empty() &&
               absl::StrContains(absl::StrCat(",", f[dash + 3], ","), ",memory,")) {
      h.group = v1_group;
    } else {
      continue;
    }
    found.push_back(h);
  }
  return found;
}

}  // namespace

MemoryLimit FindMemoryLimit(const std::string& proc_cgroup, const std::string& mountinfo,
                            int64_t physical_bytes,
                            const std::function<std::optional<int64_t>(const std::string&)>& read) {
  MemoryLimit tightest{physical_bytes, "physical memory"};
  for (const Hierarchy& h : MemoryHierarchies(proc_cgroup, mountinfo)) {
    // The group's path below the mount: a container's mount root is its own
    // group, so the rest of the path is what lies under it.
    std::string relative = h.group;
    if (h.mount_root != "/" && absl::StartsWith(relative, h.mount_root)) {
      relative = relative.substr(h.mount_root.size());
    }
    std::string dir = h.mount_point;
    std::vector<std::string> levels = {dir};
    for (absl::string_view part : absl::StrSplit(relative, '/', absl::SkipEmpty())) {
      absl::StrAppend(&dir, "/", part);
      levels.push_back(dir);
    }
    for (const std::string& level : levels) {
      const std::string file = absl::StrCat(level, h.v2 ? "/memory.max" : "/memory.limit_in_bytes");
      const std::optional<int64_t> limit = read(file);
      if (limit.has_value() && *limit > 0 && *limit < tightest.bytes) {
        tightest = {*limit, absl::StrCat(h.v2 ? "cgroup v2 " : "cgroup v1 ", file)};
      }
    }
  }
  return tightest;
}

MemoryLimit FindMemoryLimit() {
  auto slurp = [](const char* path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  const int64_t physical = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  return FindMemoryLimit(slurp("/proc/self/cgroup"), slurp("/proc/self/mountinfo"), physical,
                         [](const std::string& path) -> std::optional<int64_t> {
                           std::ifstream in(path);
                           std::string word;
                           int64_t v = 0;
                           if (!(in >> word) || !absl::SimpleAtoi(word, &v)) return std::nullopt;
                           return v;
                         });
}

}  // namespace server
}  // namespace attention
