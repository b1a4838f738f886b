// The server's memory allocator. The server links jemalloc (Debian's
// libjemalloc2) in its release build: a server whose tensors of megabytes
// come and go on several threads needs both speed and memory that goes back
// to the system, and glibc's malloc gives one or the other. With glibc's
// default thresholds freed tensors stay in the heap (a burst leaves the
// process holding its peak); with a fixed 1 MiB mmap threshold every tensor is
// a fresh mapping whose pages fault in on each call (a 2 MiB self-attention
// call took 8.7 ms of compute in the server against 1.5 ms in-process). jemalloc
// keeps freed pages for reuse and returns them after dirty_decay_ms from a
// background thread (bench/README.md has the measurements).
//
// The sanitizer build has no jemalloc (AddressSanitizer brings its own
// allocator); there, and wherever jemalloc is absent, glibc is configured as
// before (a 1 MiB mmap threshold, malloc_trim).
//
//   ConfigureAllocator();            // once, at start
//   ReturnFreeMemory();              // after a burst (MemoryBudget does it)
#ifndef SERVER_ALLOCATOR_H_
#define SERVER_ALLOCATOR_H_

#include <cstdint>
#include <string>

namespace attention {
namespace server {

// Sets the allocator up for the server (glibc: the mmap threshold; jemalloc:
// nothing, its settings are built in). Call once at start.
void ConfigureAllocator();

// Gives the memory the allocator keeps free back to the system now
// (jemalloc: purges every arena; glibc: malloc_trim).
void ReturnFreeMemory();

// Bytes the program has allocated and not freed (jemalloc's
// stats.allocated: the transport's buffers too), refreshed now; -1 where the
// allocator does not say (glibc, the sanitizer build).
int64_t AllocatedBytes();

// "jemalloc 5.3.0" or "glibc", for the start line.
std::string AllocatorName();

}  // namespace server
}  // namespace attention

#endif  // SERVER_ALLOCATOR_H_
