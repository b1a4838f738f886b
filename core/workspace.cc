#include "core/workspace.h"

#include <atomic>
#include <new>
#include <stdexcept>

namespace attention {
namespace internal {

namespace {
std::atomic<int64_t> kept_bytes_all_threads{0};
}  // namespace

struct Workspace::Kept {
  Block block;
  int64_t floats = 0;
  bool in_use = false;
  ~Kept() { kept_bytes_all_threads -= floats * 4; }
};

Workspace::Workspace(int64_t floats) {
  Kept& kept = ThisThread();
  if (!kept.in_use && floats * 4 <= kKeptWorkspaceBytes) {
    if (kept.floats < floats) {
      kept.block.reset();  // the old block goes before the larger one comes
      kept_bytes_all_threads -= kept.floats * 4;
      kept.floats = 0;  // (and none is kept if that allocation throws)
      kept.block = Allocate(floats);
      kept.floats = floats;
      kept_bytes_all_threads += floats * 4;
    }
    kept.in_use = true;
    kept_ = &kept;
    next_ = kept.block.get();
  } else if (floats > 0) {
    own_ = Allocate(floats);
    next_ = own_.get();
  }
  end_ = next_ + floats;
}

Workspace::~Workspace() {
  if (kept_ != nullptr) kept_->in_use = false;
}

float* Workspace::Take(int64_t n) {
  if (n <= 0) return nullptr;
  float* p = next_;
  next_ += Round(n);
  if (next_ > end_) throw std::logic_error("workspace too small");  // a sizing bug
  return p;
}

int64_t Workspace::KeptFloats() { return ThisThread().floats; }

int64_t Workspace::KeptBytesAllThreads() { return kept_bytes_all_threads.load(); }

// 64-byte aligned, like the pieces Take hands out. Throws std::bad_alloc.
Workspace::Block Workspace::Allocate(int64_t floats) {
  void* p = std::aligned_alloc(64, static_cast<size_t>(Round(floats)) * sizeof(float));
  if (p == nullptr) throw std::bad_alloc();
  return Block(static_cast<float*>(p));
}

Workspace::Kept& Workspace::ThisThread() {
  thread_local Kept kept;
  return kept;
}

}  // namespace internal
}  // namespace attention
