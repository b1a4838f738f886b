// The server limits the request fuzzers run under (tests/fuzz/fuzz_request.cc),
// shared with the program that writes their seed corpus
// (tests/fuzz/make_request_corpus.cc), which keeps only requests that fit.
#ifndef TESTS_FUZZ_FUZZ_LIMITS_H_
#define TESTS_FUZZ_FUZZ_LIMITS_H_

#include <cstdint>

namespace attention {
namespace fuzz {

// --max-message-mb, in bytes: gRPC refuses a larger request before any
// handler sees it, and the service refuses a request whose response would be
// larger. It also bounds the work: Q, K and V of at most 16 Ki float16
// elements between them keep every computation small.
inline constexpr int64_t kMaxMessageBytes = 32 << 10;
// --max-request-memory-mb and --max-memory-mb, in bytes.
inline constexpr int64_t kMaxRequestMemoryBytes = 8 << 20;
inline constexpr int64_t kMemoryBudgetBytes = 16 << 20;

}  // namespace fuzz
}  // namespace attention

#endif  // TESTS_FUZZ_FUZZ_LIMITS_H_
