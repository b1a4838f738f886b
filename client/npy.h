// .npy files (NumPy's format, versions 1-3) for the command-line client:
// float32, float16 and bool arrays in C order, little-endian.
//
//   absl::StatusOr<NpyArray> q = ReadNpy("q.npy");   // InvalidArgument for anything else
//   WriteNpy("o.npy", {DType::kFloat32, {2, 10, 64}, bytes});
#ifndef CLIENT_NPY_H_
#define CLIENT_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace attention {
namespace client {

struct NpyArray {
  DType dtype = DType::kFloat32;  // kFloat32, kFloat16 or kBool (bfloat16 has no .npy dtype)
  std::vector<int64_t> shape;
  std::string data;  // packed little-endian elements
};

// Reads `path`. Errors name the file: NotFound, or InvalidArgument for a file
// that is not .npy, a dtype other than float32/float16/bool, Fortran order,
// or a size that does not match the shape.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Writes `array` as a version 1.0 .npy file. kBFloat16 arrays are refused.
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

// The same on bytes, for tests.
absl::StatusOr<NpyArray> ParseNpy(const std::string& contents, const std::string& source);
absl::StatusOr<std::string> SerializeNpy(const NpyArray& array);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_NPY_H_
