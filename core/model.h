// Read-only models: the weights of an nn.MultiheadAttention, loaded once from
// a safetensors file (scripts/export_model.py writes one from PyTorch).
//
//   absl::StatusOr<std::unique_ptr<const Model>> m = LoadModel("demo", "demo.safetensors");
//   if (!m.ok()) { /* InvalidArgument / NotFound naming the file */ }
//   args.projection = &(*m)->weights();
//   args.num_heads = (*m)->info().num_heads;
//
// The file holds the state_dict tensors under PyTorch's names (in_proj_weight,
// in_proj_bias, out_proj.weight, out_proj.bias, or q_proj_weight,
// k_proj_weight, v_proj_weight) as F32, F16 or BF16, and num_heads in its
// __metadata__. Any other tensor is an error (nothing is silently ignored).
// Weights are kept as float32. A Model is immutable: share it between threads.
#ifndef CORE_MODEL_H_
#define CORE_MODEL_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/attention.h"
#include "core/safetensors.h"

namespace attention {

struct ModelInfo {
  std::string name;
  int64_t embed_dim = 0;
  int64_t num_heads = 0;
  int64_t kdim = 0;
  int64_t vdim = 0;
  bool bias = false;
};

class Model {
 public:
  const ModelInfo& info() const { return info_; }
  // Views of the weights this Model owns, prepared for the matrix kernels
  // once (PrepareProjection); valid as long as the Model.
  const ProjectionWeights& weights() const { return weights_; }

 private:
  friend absl::StatusOr<std::unique_ptr<const Model>> ModelFromFile(const std::string&,
                                                                    const SafetensorsFile&,
                                                                    const std::string&);
  ModelInfo info_;
  std::map<std::string, FloatTensor> tensors_;
  ProjectionWeights weights_;
  std::shared_ptr<const PreparedProjection> prepared_;
};

// The projection weights among `tensors` (named as in the state_dict), as
// views of them. InvalidArgument naming `source` for a tensor of any other
// name or of a non-float dtype; shapes are ValidateProjection's business.
absl::StatusOr<ProjectionWeights> ProjectionFromTensors(
    const std::map<std::string, TensorView>& tensors, const std::string& source);

// Reads and validates the model at `path`, naming it `name`.
absl::StatusOr<std::unique_ptr<const Model>> LoadModel(const std::string& name,
                                                       const std::string& path);

// The same from a parsed file; `source` names it in errors.
absl::StatusOr<std::unique_ptr<const Model>> ModelFromFile(const std::string& name,
                                                           const SafetensorsFile& file,
                                                           const std::string& source);

}  // namespace attention

#endif  // CORE_MODEL_H_
