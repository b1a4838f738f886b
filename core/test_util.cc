#include "core/test_util.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attention {
namespace testing {

int64_t ProcStatusBytes(int pid, const std::string& field) {
  std::ifstream in(pid == 0 ? std::string("/proc/self/status")
                            : "/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

std::string SourcePath(const std::string& relative) {
  return std::string(ATTENTION_SOURCE_DIR) + "/" + relative;
}

std::vector<std::string> FixturePaths(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(SourcePath(dir))) {
    if (entry.path().extension() == ".safetensors") paths.push_back(entry.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

absl::StatusOr<std::unique_ptr<Fixture>> LoadFixture(const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
  if (!file.ok()) return file.status();
  auto f = std::make_unique<Fixture>();
  f->name = std::filesystem::path(path).stem().string();
  f->file = std::move(*file);
  const SafetensorsFile& st = f->file;
  auto meta = [&](const std::string& key, const std::string& fallback) {
    auto it = st.metadata.find(key);
    return it == st.metadata.end() ? fallback : it->second;
  };
  auto opt = [&](const char* name) -> std::optional<TensorView> {
    const TensorView* v = st.Find(name);
    return v ? std::optional<TensorView>(*v) : std::nullopt;
  };
  AttentionArgs& a = f->args;
  a.self_attention = meta("kind", "") == "self_attention";
  const TensorView* q = st.Find(a.self_attention ? "input" : "query");
  if (q == nullptr) return absl::InvalidArgumentError(path + ": no query/input");
  a.query = *q;
  if (!a.self_attention) {
    a.key = opt("key");
    a.value = opt("value");
  }
  if (!absl::SimpleAtoi(meta("num_heads", "0"), &a.num_heads) ||
      !absl::SimpleAtoi(meta("num_kv_heads", "0"), &a.num_kv_heads)) {
    return absl::InvalidArgumentError(path + ": bad num_heads");
  }
  if (st.metadata.count("scale")) {
    float s;
    if (!absl::SimpleAtof(meta("scale", ""), &s)) return absl::InvalidArgumentError("bad scale");
    a.scale = s;
  }
  a.causal = meta("causal", "0") == "1";
  const std::string w = meta("weights", "none");
  a.weights = w == "average"    ? WeightsMode::kAveraged
              : w == "per_head" ? WeightsMode::kPerHead
                                : WeightsMode::kNone;
  a.attn_mask = opt("attn_mask");
  a.key_padding_mask = opt("key_padding_mask");
  ProjectionWeights& p = f->projection;
  for (const ProjectionTensor& t : kProjectionTensors) p.*t.member = opt(t.state_dict_name);
  if (p.out_proj_weight) a.projection = &p;
  f->model = meta("model", "");
  f->expected_output = st.Find("expected_output");
  f->expected_weights = st.Find("expected_weights");
  if (f->expected_output == nullptr)
    return absl::InvalidArgumentError(path + ": no expected_output");
  return f;
}

FloatTensor RandomTensor(std::vector<int64_t> shape, std::mt19937& rng, float scale) {
  FloatTensor t;
  const int64_t n = ShapeProduct(shape);
  t.shape = std::move(shape);
  std::uniform_real_distribution<float> dist(-scale, scale);
  t.data.resize(n);
  for (float& x : t.data) x = dist(rng);
  return t;
}

std::vector<float> ToFloats(const TensorView& view) {
  std::vector<float> out(ShapeProduct(view.shape));
  ConvertToFloat32(view, out.data());
  return out;
}

}  // namespace testing
}  // namespace attention
