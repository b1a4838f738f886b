// A strict reader for safetensors files (the format PyTorch and Hugging Face
// export): an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the packed tensor bytes.
//
//   absl::StatusOr<SafetensorsFile> file = ReadSafetensors("model.safetensors");
//   if (!file.ok()) return file.status();          // InvalidArgument / NotFound
//   const TensorView* w = file->Find("in_proj_weight");
//   std::string heads = file->metadata["num_heads"];
//
// Everything in the header is checked against the file before it is used:
// dtypes (F32, F16, BF16, BOOL), shapes (positive dims, no overflow), byte
// ranges (inside the data section, sized exactly, not overlapping) and the
// metadata (a map of strings). Malformed files get InvalidArgument with the
// file name and the problem. Thread-safe (no shared state).
#ifndef CORE_SAFETENSORS_H_
#define CORE_SAFETENSORS_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tensor.h"

namespace attention {

struct SafetensorsFile {
  SafetensorsFile() = default;
  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  // Not copyable: the views in `tensors` point into `contents` (a moved
  // std::string keeps its heap buffer, so moving is safe).
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  std::string contents;  // the whole file
  std::map<std::string, TensorView> tensors;
  std::map<std::string, std::string> metadata;

  // The tensor called `name`, or nullptr.
  const TensorView* Find(absl::string_view name) const;
};

// Reads and validates `path`. NotFound if it cannot be opened.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// Validates `contents` (a whole file); `source` names it in error messages.
absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string contents, absl::string_view source);

// The file format of `tensors` and `metadata`, for tests and tools that write
// models: tensors are stored in map order, packed, with a padded header.
std::string SerializeSafetensors(const std::map<std::string, TensorView>& tensors,
                                 const std::map<std::string, std::string>& metadata);

}  // namespace attention

#endif  // CORE_SAFETENSORS_H_
