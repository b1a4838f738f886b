#include "client/npy.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace attention {
namespace client {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::Status Bad(const std::string& source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// The value of 'key' in the header dict: the text up to the next top-level
// comma or closing brace.
bool HeaderValue(absl::string_view header, absl::string_view key, std::string* value) {
  const std::string quoted[] = {absl::StrCat("'", key, "'"), absl::StrCat("\"", key, "\"")};
  size_t at = absl::string_view::npos;
  for (const std::string& q : quoted) {
    at = header.find(q);
    if (at != absl::string_view::npos) {
      at += q.size();
      break;
    }
  }
  if (at == absl::string_view::npos) return false;
  at = header.find(':', at);
  if (at == absl::string_view::npos) return false;
  ++at;
  int depth = 0;
  size_t end = at;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  *value = std::string(absl::StripAsciiWhitespace(header.substr(at, end - at)));
  return true;
}

}  // namespace

absl::StatusOr<NpyArray> ParseNpy(const std::string& c, const std::string& source) {
  if (c.size() < 10 || c.compare(0, 6, kMagic, 6) != 0) {
    return Bad(source, "not a .npy file (no \\x93NUMPY magic)");
  }
  const int major = static_cast<uint8_t>(c[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<uint8_t>(c[8]) | (static_cast<uint8_t>(c[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (c.size() < 12) return Bad(source, "truncated header");
    header_len = 0;
    for (int i = 11; i >= 8; --i) header_len = (header_len << 8) | static_cast<uint8_t>(c[i]);
    header_start = 12;
  } else {
    return Bad(source, absl::StrCat(".npy version ", major, " is not supported"));
  }
  if (header_start + header_len > c.size()) return Bad(source, "truncated header");
  const absl::string_view header(c.data() + header_start, header_len);
  std::string descr, fortran, shape_text;
  if (!HeaderValue(header, "descr", &descr) || !HeaderValue(header, "fortran_order", &fortran) ||
      !HeaderValue(header, "shape", &shape_text)) {
    return Bad(source, "header lacks descr, fortran_order or shape");
  }
  NpyArray a;
  descr = std::string(absl::StripSuffix(absl::StripPrefix(descr, "'"), "'"));
  if (descr == "<f4" || descr == "=f4") {
    a.dtype = DType::kFloat32;
  } else if (descr == "<f2" || descr == "=f2") {
    a.dtype = DType::kFloat16;
  } else if (descr == "|b1") {
    a.dtype = DType::kBool;
  } else {
    return Bad(source, absl::StrCat("dtype '", descr,
                                    "' is not supported; save float32, float16 or bool "
                                    "(e.g. x.astype(numpy.float32))"));
  }
  if (fortran != "False") {
    return Bad(source, "Fortran-order arrays are not supported; save numpy.ascontiguousarray(x)");
  }
  absl::string_view dims = absl::StripSuffix(absl::StripPrefix(shape_text, "("), ")");
  for (absl::string_view d : absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v) || v < 0) {
      return Bad(source, absl::StrCat("bad shape ", shape_text));
    }
    a.shape.push_back(v);
  }
  int64_t n = 1;
  for (int64_t d : a.shape) {
    if (d != 0 && n > kMaxElements / d) return Bad(source, "shape too large");
    n *= d;
  }
  const size_t data_start = header_start + header_len;
  const uint64_t want = static_cast<uint64_t>(n) * DTypeSize(a.dtype);
  if (c.size() - data_start != want) {
    return Bad(source, absl::StrCat("data has ", c.size() - data_start, " bytes but shape ",
                                    shape_text, " needs ", want));
  }
  a.data = c.substr(data_start);
  return a;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return ParseNpy(std::move(buffer).str(), path);
}

absl::StatusOr<std::string> SerializeNpy(const NpyArray& a) {
  const char* descr = a.dtype == DType::kFloat32   ? "<f4"
                      : a.dtype == DType::kFloat16 ? "<f2"
                      : a.dtype == DType::kBool    ? "|b1"
                                                   : nullptr;
  if (descr == nullptr) {
    return absl::InvalidArgumentError("bfloat16 has no .npy dtype; convert to float32 first");
  }
  std::string shape = absl::StrJoin(a.shape, ", ");
  if (a.shape.size() == 1) shape += ",";
  std::string header =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", shape, "), }");
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out(kMagic, 6);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  return out + header + a.data;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  absl::StatusOr<std::string> bytes = SerializeNpy(array);
  if (!bytes.ok()) return bytes.status();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  return absl::OkStatus();
}

}  // namespace client
}  // namespace attention
