#include "tests/cgroup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attention {
namespace testing {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.flush();
  return static_cast<bool>(out);
}

// The value after `key` in a "key value" file (memory.events, oom_control).
int64_t Field(const std::string& text, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<absl::string_view> kv = absl::StrSplit(line, ' ');
    int64_t v = 0;
    if (kv.size() == 2 && kv[0] == key && absl::SimpleAtoi(kv[1], &v)) return v;
  }
  return 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryCgroup>> MemoryCgroup::Create(int64_t limit_bytes) {
  std::string v1_group, v2_group;
  bool has_v2 = false;
  for (absl::string_view line : absl::StrSplit(Slurp("/proc/self/cgroup"), '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty()) v2_group = std::string(f[2]), has_v2 = true;
    for (absl::string_view c : absl::StrSplit(f[1], ',')) {
      if (c == "memory") v1_group = std::string(f[2]);
    }
  }
  const std::string name = absl::StrCat("/attention-test-", getpid(), "-", limit_bytes);
  std::string dir;
  bool v2 = false;
  if (!v1_group.empty() && access("/sys/fs/cgroup/memory/cgroup.procs", F_OK) == 0) {
    dir = "/sys/fs/cgroup/memory" + (v1_group == "/" ? "" : v1_group) + name;
  } else if (has_v2 && access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
    dir = "/sys/fs/cgroup" + (v2_group == "/" ? "" : v2_group) + name;
    v2 = true;
  } else {
    return absl::UnavailableError("no memory cgroup hierarchy on this machine");
  }
  if (mkdir(dir.c_str(), 0755) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot make ", dir, " (not root?)"));
  }
  const std::string limit = std::to_string(limit_bytes);
  const bool set =
      v2 ? WriteFile(dir + "/memory.max", limit) && WriteFile(dir + "/memory.swap.max", "0")
         : WriteFile(dir + "/memory.limit_in_bytes", limit);
  if (!v2)
    WriteFile(dir + "/memory.memsw.limit_in_bytes", limit);  // absent without swap accounting
  if (!set) {
    rmdir(dir.c_str());
    return absl::UnavailableError(absl::StrCat("cannot set the limit of ", dir));
  }
  return std::unique_ptr<MemoryCgroup>(new MemoryCgroup(dir, v2));
}

MemoryCgroup::~MemoryCgroup() {
  for (int i = 0; i < 50 && rmdir(dir_.c_str()) != 0; ++i) usleep(100000);
}

int64_t MemoryCgroup::PeakBytes() const {
  const std::string text = Slurp(dir_ + (v2_ ? "/memory.peak" : "/memory.max_usage_in_bytes"));
  int64_t v = 0;
  return absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v) ? v : -1;
}

int64_t MemoryCgroup::OomKills() const {
  return Field(Slurp(dir_ + (v2_ ? "/memory.events" : "/memory.oom_control")), "oom_kill");
}

}  // namespace testing
}  // namespace attention
