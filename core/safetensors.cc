#include "core/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace attention {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;
// A safetensors header nests three levels (header, tensor entry, lists); a
// deeper one is refused before it is parsed, so that no recursive step on
// untrusted JSON (serializing it, destroying it) can run out of stack.
constexpr int kMaxHeaderDepth = 16;
// The most of a name or value from the file that an error message echoes.
constexpr size_t kMaxEchoedBytes = 64;

// `text` for an error message: escaped (a newline in a name cannot forge a
// log line) and cut to kMaxEchoedBytes.
std::string Echo(absl::string_view text) {
  std::string out = absl::CHexEscape(text.substr(0, kMaxEchoedBytes));
  if (text.size() > kMaxEchoedBytes) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

// The deepest nesting of arrays and objects in `json` (strings skipped).
int NestingDepth(absl::string_view json) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : json) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

absl::Status Malformed(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid safetensors file: ", what));
}

bool ParseDType(const std::string& s, DType* dtype) {
  if (s == "F32")
    *dtype = DType::kFloat32;
  else if (s == "F16")
    *dtype = DType::kFloat16;
  else if (s == "BF16")
    *dtype = DType::kBFloat16;
  else if (s == "BOOL")
    *dtype = DType::kBool;
  else
    return false;
  return true;
}

const char* DTypeCode(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "F32";
    case DType::kFloat16:
      return "F16";
    case DType::kBFloat16:
      return "BF16";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

}  // namespace

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  auto it = tensors.find(std::string(name));
  return it == tensors.end() ? nullptr : &it->second;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ParseSafetensors(std::move(buffer).str(), path);
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string contents, absl::string_view source) {
  if (contents.size() < 8) return Malformed(source, "shorter than 8 bytes");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<uint8_t>(contents[i]);
  }
  if (header_len > kMaxHeaderBytes || header_len > contents.size() - 8) {
    return Malformed(source, absl::StrCat("header length ", header_len, " exceeds the file size ",
                                          contents.size()));
  }
  if (NestingDepth(absl::string_view(contents).substr(8, header_len)) > kMaxHeaderDepth) {
    return Malformed(source, absl::StrCat("header nests deeper than ", kMaxHeaderDepth, " levels"));
  }
  nlohmann::json header =
      nlohmann::json::parse(contents.begin() + 8, contents.begin() + 8 + header_len, nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Malformed(source, "header is not a JSON object");
  }
  SafetensorsFile file;
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = contents.size() - data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Malformed(source, "__metadata__ is not an object");
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Malformed(source, absl::StrCat("__metadata__.", Echo(key), " is not a string"));
        }
        file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", Echo(name), "'");
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      return Malformed(source, absl::StrCat(where, " needs dtype, shape and data_offsets"));
    }
    const nlohmann::json& dtype_json = entry["dtype"];
    TensorView view;
    if (!dtype_json.is_string() || !ParseDType(dtype_json.get<std::string>(), &view.dtype)) {
      return Malformed(source,
                       absl::StrCat(where, " has dtype ",
                                    dtype_json.is_string()
                                        ? "\"" + Echo(dtype_json.get<std::string>()) + "\""
                                        : absl::StrCat("of JSON type ", dtype_json.type_name()),
                                    "; supported: F32, F16, BF16, BOOL"));
    }
    const nlohmann::json& shape = entry["shape"];
    if (!shape.is_array() || shape.size() > 8) {
      return Malformed(source, absl::StrCat(where, " shape must be a list of at most 8 dims"));
    }
    for (const nlohmann::json& d : shape) {
      if (!d.is_number_integer()) {
        return Malformed(source, absl::StrCat(where, " shape has a non-integer dim"));
      }
      view.shape.push_back(d.get<int64_t>());
    }
    absl::StatusOr<int64_t> n = CheckedProduct(view.shape, where);
    if (!n.ok()) return Malformed(source, n.status().message());
    const nlohmann::json& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return Malformed(source, absl::StrCat(where, " data_offsets must be [begin, end]"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Malformed(source, absl::StrCat(where, " data_offsets [", begin, ",", end,
                                            "] outside the data section of ", data_size, " bytes"));
    }
    view.byte_size = end - begin;
    if (view.byte_size != static_cast<uint64_t>(*n) * DTypeSize(view.dtype)) {
      return Malformed(source,
                       absl::StrCat(where, " has ", view.byte_size, " bytes but its shape needs ",
                                    *n * DTypeSize(view.dtype)));
    }
    view.data = reinterpret_cast<const void*>(data_start + begin);  // rebased below
    ranges.emplace_back(begin, end);
    file.tensors.emplace(name, std::move(view));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return Malformed(source, "tensors' data_offsets overlap");
    }
  }
  file.contents = std::move(contents);
  for (auto& [name, view] : file.tensors) {
    view.data = file.contents.data() + reinterpret_cast<uintptr_t>(view.data);
  }
  return file;
}

std::string SerializeSafetensors(const std::map<std::string, TensorView>& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, view] : tensors) {
    header[name] = {{"dtype", DTypeCode(view.dtype)},
                    {"shape", view.shape},
                    {"data_offsets", {offset, offset + view.byte_size}}};
    offset += view.byte_size;
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  std::string out(8, '\0');
  const uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out += text;
  for (const auto& [name, view] : tensors) {
    out.append(static_cast<const char*>(view.data), view.byte_size);
  }
  return out;
}

}  // namespace attention
