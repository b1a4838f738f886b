// Helpers of the end-to-end tests: fixtures as wire requests, result checks.
#ifndef TESTS_E2E_UTIL_H_
#define TESTS_E2E_UTIL_H_

#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "core/test_util.h"

namespace attention {
namespace testing {

// The fixture's tensors and options as a request; float tensors in `wire`.
v1::AttentionRequest ToAttentionRequest(const Fixture& f, DType wire = DType::kFloat32);
v1::SelfAttentionRequest ToSelfAttentionRequest(const Fixture& f, DType wire = DType::kFloat32);
v1::Tensor ToProto(const TensorView& view, DType wire = DType::kFloat32);

// Relative max error of a response tensor against a fixture tensor, or a
// large number when dtype/shape/size do not fit.
double ErrorAgainst(const v1::Tensor& got, const TensorView& want);

// Flags that load the three models the e2e fixtures name.
std::vector<std::string> ModelFlags();

}  // namespace testing
}  // namespace attention

#endif  // TESTS_E2E_UTIL_H_
