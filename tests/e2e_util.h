// Helpers of the end-to-end tests: fixtures as wire requests, result checks,
// the admin endpoint's metrics.
#ifndef TESTS_E2E_UTIL_H_
#define TESTS_E2E_UTIL_H_

#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "core/test_util.h"
#include "tests/server_process.h"

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

// The admin port the server printed at start (-1 if none: start it with
// --admin-listen=127.0.0.1:0).
int AdminPort(ServerProcess& server);
// GET http://127.0.0.1:port/path: the status (-1 when no answer), body in `body`.
int HttpGet(int port, const std::string& path, std::string* body = nullptr);
// The value of the sample `series` (name and labels as exposed) in a
// /metrics text, -1 if absent.
double Sample(const std::string& text, const std::string& series);

}  // namespace testing
}  // namespace attention

#endif  // TESTS_E2E_UTIL_H_
