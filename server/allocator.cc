#include "server/allocator.h"

#include <malloc.h>

#include <cstdint>
#include <string>

#if defined(ATTENTION_WITH_JEMALLOC)
#include <jemalloc/jemalloc.h>
#endif

namespace attention {
namespace server {

#if defined(ATTENTION_WITH_JEMALLOC)

// Read by jemalloc when it starts (before main): freed pages are returned
// after a second (dirty_decay_ms) by a background thread, at once rather than
// lazily (muzzy_decay_ms:0: MADV_FREE pages would still count against a
// cgroup's limit until the kernel reclaims them).
extern "C" {
// NOLINTNEXTLINE: the name and type jemalloc looks for
const char* malloc_conf = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";
}

void ConfigureAllocator() {}

void ReturnFreeMemory() {
  static const std::string kPurgeAll = "arena." + std::to_string(MALLCTL_ARENAS_ALL) + ".purge";
  mallctl(kPurgeAll.c_str(), nullptr, nullptr, nullptr, 0);
}

int64_t AllocatedBytes() {
  uint64_t epoch = 1;
  size_t size = sizeof(epoch);
  mallctl("epoch", &epoch, &size, &epoch, size);  // refreshes the statistics
  size_t allocated = 0;
  size = sizeof(allocated);
  if (mallctl("stats.allocated", &allocated, &size, nullptr, 0) != 0) return -1;
  return static_cast<int64_t>(allocated);
}

std::string AllocatorName() {
  const char* version = nullptr;
  size_t size = sizeof(version);
  if (mallctl("version", &version, &size, nullptr, 0) != 0 || version == nullptr) {
    return "jemalloc";
  }
  const std::string v = version;  // "5.3.0-0-g54eaed1d8b..."
  return "jemalloc " + v.substr(0, v.find('-'));
}

#else

namespace {
// Allocations from this size on are mmapped, so that freed tensors go back
// to the system instead of staying in the heap.
constexpr int kMmapThresholdBytes = 1 << 20;
}  // namespace

void ConfigureAllocator() { mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes); }

void ReturnFreeMemory() { malloc_trim(0); }

int64_t AllocatedBytes() { return -1; }

std::string AllocatorName() { return "glibc"; }

#endif

}  // namespace server
}  // namespace attention
