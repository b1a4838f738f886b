#include "tests/e2e_util.h"

#include <httplib.h>

#include <cstdlib>
#include <regex>
#include <sstream>

#include "client/client.h"
#include "core/reference.h"

namespace attention {
namespace testing {
namespace {

// The fixture's options; a model name instead of weights when it names one.
v1::AttentionOptions Options(const Fixture& f) {
  v1::AttentionOptions o = convert::ToWire(f.args);
  if (!f.model.empty()) {
    o.clear_projection();
    o.set_model(f.model);
  }
  return o;
}

}  // namespace

v1::Tensor ToProto(const TensorView& view, DType wire) {
  if (view.dtype == DType::kBool) {
    return client::MakeBoolTensor(view.shape, static_cast<const uint8_t*>(view.data));
  }
  const std::vector<float> f = ToFloats(view);
  return client::MakeTensor(view.shape, f.data(), wire);
}

v1::AttentionRequest ToAttentionRequest(const Fixture& f, DType wire) {
  v1::AttentionRequest r;
  r.set_id(f.name);
  *r.mutable_query() = ToProto(f.args.query, wire);
  *r.mutable_key() = ToProto(*f.args.key, wire);
  *r.mutable_value() = ToProto(*f.args.value, wire);
  *r.mutable_options() = Options(f);
  return r;
}

v1::SelfAttentionRequest ToSelfAttentionRequest(const Fixture& f, DType wire) {
  v1::SelfAttentionRequest r;
  r.set_id(f.name);
  *r.mutable_input() = ToProto(f.args.query, wire);
  *r.mutable_options() = Options(f);
  return r;
}

double ErrorAgainst(const v1::Tensor& got, const TensorView& want) {
  absl::StatusOr<FloatTensor> g = client::ToFloat(got, "got");
  if (!g.ok() || g->shape != want.shape) return 1e9;
  const std::vector<float> w = ToFloats(want);
  return RelativeMaxError(g->data.data(), {w.begin(), w.end()});
}

std::vector<std::string> ModelFlags() {
  return {
      "--model", "demo=" + SourcePath("models/demo.safetensors"),
      "--model", "mha_e32_h4=" + SourcePath("tests/fixtures/models/mha_e32_h4.safetensors"),
      "--model", "mha_e32_h2_kv=" + SourcePath("tests/fixtures/models/mha_e32_h2_kv.safetensors")};
}

int AdminPort(ServerProcess& server) {
  static const std::regex kAdmin("admin endpoint on http://[^ ]*:([0-9]+) ");
  std::smatch m;
  const std::string out = server.Output();
  return std::regex_search(out, m, kAdmin) ? std::stoi(m[1]) : -1;
}

int HttpGet(int port, const std::string& path, std::string* body) {
  httplib::Client http("127.0.0.1", port);
  http.set_connection_timeout(2);
  http.set_read_timeout(5);
  httplib::Result r = http.Get(path.c_str());
  if (!r) return -1;
  if (body != nullptr) *body = r->body;
  return r->status;
}

double Sample(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
    }
  }
  return -1;
}

}  // namespace testing
}  // namespace attention
