// Test helpers: PyTorch fixture files (tests/fixtures/*.safetensors, see
// tests/fixtures/README.md) as AttentionArgs, and random tensors.
#ifndef CORE_TEST_UTIL_H_
#define CORE_TEST_UTIL_H_

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention.h"
#include "core/safetensors.h"

namespace attention {
namespace testing {

// One fixture: the file, and views of it arranged as a call. Not movable
// (args points into it); held by unique_ptr.
struct Fixture {
  std::string name;
  SafetensorsFile file;
  ProjectionWeights projection;
  AttentionArgs args;
  std::string model;  // metadata "model": a preloaded model's name, or ""
  const TensorView* expected_output = nullptr;
  const TensorView* expected_weights = nullptr;
};

absl::StatusOr<std::unique_ptr<Fixture>> LoadFixture(const std::string& path);

// Paths of `dir`/*.safetensors (dir relative to the source tree), sorted.
std::vector<std::string> FixturePaths(const std::string& dir = "tests/fixtures");
// ATTENTION_SOURCE_DIR + "/" + relative.
std::string SourcePath(const std::string& relative);

// Whether this build runs under AddressSanitizer, whose shadow memory and
// quarantine of freed blocks then make up most of a process's resident
// memory: tests of RSS skip those comparisons (and keep their other checks).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

// A field of /proc/PID/status in bytes (VmRSS, VmHWM), or -1; pid 0: this
// process.
int64_t ProcStatusBytes(int pid, const std::string& field);

// Uniform [-1, 1) floats of `shape`.
FloatTensor RandomTensor(std::vector<int64_t> shape, std::mt19937& rng, float scale = 1.0f);

// Float32 copy of a view's elements.
std::vector<float> ToFloats(const TensorView& view);

}  // namespace testing
}  // namespace attention

#endif  // CORE_TEST_UTIL_H_
