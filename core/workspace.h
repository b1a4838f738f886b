// Float storage for one call's intermediates (projections, packed heads,
// score tiles), carved from a block each thread keeps between calls.
//
//   Workspace ws(Workspace::Round(a) + Workspace::Round(b));  // may throw
//   float* x = ws.Take(a);
//   float* y = ws.Take(b);
//
// Why a kept block: fresh allocations of these megabytes came back from the
// system on most calls (free() trims the heap when that much is free at its
// top), so every call page-faulted and had the kernel zero them.
//
// Contract:
// - Every piece Take hands out is 64-byte aligned (cache lines, AVX-512
//   vectors) and is not zero-filled: callers write before they read.
// - Needs up to kKeptWorkspaceBytes use the calling thread's kept block,
//   grown when a call needs more and reused by later calls of that thread.
//   Larger needs, and a Workspace made while another of the same thread is
//   alive, get a block of their own, freed with the Workspace.
// - The constructor throws std::bad_alloc when allocation fails; a thread
//   whose kept block was to grow then keeps none (its old block is freed
//   first, so that the two never coexist).
// - A Workspace belongs to the thread that made it (not thread-safe); any
//   number of threads may each have their own.
#ifndef CORE_WORKSPACE_H_
#define CORE_WORKSPACE_H_

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "core/arith.h"

namespace attention {
namespace internal {

// The largest block a thread keeps between calls.
inline constexpr int64_t kKeptWorkspaceBytes = int64_t{64} << 20;

class Workspace {
 public:
  // Room for `floats` floats in total (Take rounds each piece up to 64 bytes:
  // size the total with Round).
  explicit Workspace(int64_t floats);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // The next n floats (nullptr for none). Throws std::logic_error when the
  // pieces taken exceed the total (a sizing bug of the caller).
  float* Take(int64_t n);

  // What Take(n) uses of the total.
  static int64_t Round(int64_t n) { return n <= 0 ? 0 : RoundUp(n, 16); }

  // Floats in the calling thread's kept block (0: none), for tests.
  static int64_t KeptFloats();
  // Bytes in every thread's kept block: memory no request accounts for once
  // its computation is over (the server's fixed part).
  static int64_t KeptBytesAllThreads();

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  using Block = std::unique_ptr<float[], Free>;
  struct Kept;

  static Block Allocate(int64_t floats);
  static Kept& ThisThread();

  Kept* kept_ = nullptr;  // the thread's block, when this uses it
  Block own_;             // else a block of its own (or none)
  float* next_ = nullptr;
  float* end_ = nullptr;
};

}  // namespace internal
}  // namespace attention

#endif  // CORE_WORKSPACE_H_
