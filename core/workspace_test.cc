// Workspace: the per-thread block kept between calls (core/workspace.h).
#include "core/workspace.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <thread>

#include "gtest/gtest.h"

namespace attention {
namespace internal {
namespace {

constexpr int64_t kKeptFloats = kKeptWorkspaceBytes / 4;

bool Aligned64(const float* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

// Each test runs on a fresh thread: a thread of its own has no kept block yet.
template <typename Body>
void OnNewThread(Body body) {
  std::thread t(body);
  t.join();
}

TEST(Workspace, HandsOutDisjointPiecesAlignedTo64Bytes) {
  OnNewThread([] {
    Workspace ws(Workspace::Round(1) + Workspace::Round(17) + Workspace::Round(100));
    float* a = ws.Take(1);
    float* b = ws.Take(17);
    float* c = ws.Take(100);
    for (float* p : {a, b, c}) EXPECT_TRUE(Aligned64(p));
    EXPECT_GE(b, a + 1);
    EXPECT_GE(c, b + 17);
    for (int i = 0; i < 100; ++i) c[i] = 1.0f;  // writable (ASan would object otherwise)
    EXPECT_EQ(ws.Take(0), nullptr);
    EXPECT_THROW(ws.Take(1), std::logic_error);  // more than the total: a sizing bug
  });
}

TEST(Workspace, RoundIsAMultipleOf16Floats) {
  EXPECT_EQ(Workspace::Round(0), 0);
  EXPECT_EQ(Workspace::Round(-3), 0);
  EXPECT_EQ(Workspace::Round(1), 16);
  EXPECT_EQ(Workspace::Round(16), 16);
  EXPECT_EQ(Workspace::Round(17), 32);
}

TEST(Workspace, ReusesTheThreadsBlockUpToTheKeptSize) {
  OnNewThread([] {
    EXPECT_EQ(Workspace::KeptFloats(), 0);
    float* first;
    {
      Workspace ws(1024);
      first = ws.Take(1024);
    }
    EXPECT_EQ(Workspace::KeptFloats(), 1024);
    {
      Workspace ws(512);  // smaller: the same block
      EXPECT_EQ(ws.Take(512), first);
    }
    EXPECT_EQ(Workspace::KeptFloats(), 1024);
    {
      Workspace ws(kKeptFloats);  // larger, up to the kept size: the block grows
      EXPECT_TRUE(Aligned64(ws.Take(kKeptFloats)));
    }
    EXPECT_EQ(Workspace::KeptFloats(), kKeptFloats);
    float* grown;
    {
      Workspace ws(16);
      grown = ws.Take(16);
    }
    Workspace again(kKeptFloats);
    EXPECT_EQ(again.Take(kKeptFloats), grown);  // kept, not allocated anew
  });
}

TEST(Workspace, LargerNeedsAreAllocatedForTheCallAndFreed) {
  OnNewThread([] {
    float* kept;
    {
      Workspace ws(64);
      kept = ws.Take(64);
    }
    {
      Workspace big(kKeptFloats + 16);  // over the kept size
      float* p = big.Take(kKeptFloats + 16);
      EXPECT_NE(p, kept);
      EXPECT_TRUE(Aligned64(p));
      p[kKeptFloats + 15] = 1.0f;
    }
    EXPECT_EQ(Workspace::KeptFloats(), 64);  // the kept block is untouched
    Workspace small(64);
    EXPECT_EQ(small.Take(64), kept);
  });
}

TEST(Workspace, ANestedWorkspaceGetsABlockOfItsOwn) {
  OnNewThread([] {
    Workspace outer(64);
    float* a = outer.Take(64);
    {
      Workspace inner(64);  // the kept block is in use
      float* b = inner.Take(64);
      EXPECT_TRUE(b + 64 <= a || a + 64 <= b);
    }
    EXPECT_EQ(Workspace::KeptFloats(), 64);
  });
}

TEST(Workspace, ThreadsKeepBlocksOfTheirOwn) {
  float* mine = nullptr;
  float* theirs = nullptr;
  OnNewThread([&] {
    Workspace ws(64);
    mine = ws.Take(64);
    OnNewThread([&] {
      Workspace other(64);  // while `ws` is alive on the first thread
      theirs = other.Take(64);
      EXPECT_EQ(Workspace::KeptFloats(), 64);
    });
  });
  EXPECT_NE(mine, theirs);
}

// Keeps a small block, caps the address space at what the process has now
// plus 16 MiB, then asks for the largest kept block: exits 0 when that
// allocation throws and leaves the thread with no kept block (the old one
// was freed first), another code naming what went otherwise.
[[noreturn]] void GrowUnderCappedMemory() {
  { Workspace ws(1024); }
  if (Workspace::KeptFloats() != 1024) std::_Exit(2);
  long pages = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  if (pages <= 0) std::_Exit(3);
  const rlim_t now = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE));
  rlimit cap;
  cap.rlim_cur = cap.rlim_max = now + (rlim_t{16} << 20);
  if (setrlimit(RLIMIT_AS, &cap) != 0) std::_Exit(4);
  try {
    Workspace ws(kKeptFloats);
    std::_Exit(5);  // the allocation should not have fitted
  } catch (const std::bad_alloc&) {
    std::_Exit(Workspace::KeptFloats() == 0 ? 0 : 6);
  }
}

TEST(WorkspaceDeathTest, AFailedAllocationLeavesNothingKept) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_EXIT(GrowUnderCappedMemory(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace internal
}  // namespace attention
