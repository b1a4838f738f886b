#include "core/model.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attention {

absl::StatusOr<std::unique_ptr<const Model>> ModelFromFile(const std::string& name,
                                                           const SafetensorsFile& file,
                                                           const std::string& source) {
  auto model = std::unique_ptr<Model>(new Model);
  ProjectionWeights& w = model->weights_;
  const std::pair<const char*, std::optional<TensorView>*> slots[] = {
      {"in_proj_weight", &w.in_proj_weight}, {"q_proj_weight", &w.q_proj_weight},
      {"k_proj_weight", &w.k_proj_weight},   {"v_proj_weight", &w.v_proj_weight},
      {"in_proj_bias", &w.in_proj_bias},     {"out_proj.weight", &w.out_proj_weight},
      {"out_proj.bias", &w.out_proj_bias}};
  for (const auto& [tensor_name, view] : file.tensors) {
    std::optional<TensorView>* slot = nullptr;
    for (const auto& [known, s] : slots) {
      if (tensor_name == known) slot = s;
    }
    if (slot == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": unexpected tensor '", tensor_name,
                       "'; a model holds nn.MultiheadAttention's state_dict (in_proj_weight, "
                       "in_proj_bias, out_proj.weight, out_proj.bias, q/k/v_proj_weight)"));
    }
    if (!IsFloat(view.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor '", tensor_name, "' has dtype ", DTypeName(view.dtype)));
    }
    FloatTensor& t = model->tensors_[tensor_name];
    t.shape = view.shape;
    t.data.resize(view.byte_size / DTypeSize(view.dtype));
    ConvertToFloat32(view, t.data.data());
    *slot = t.view();
  }
  absl::StatusOr<ProjectionShape> shape = ValidateProjection(w, "");
  if (!shape.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", shape.status().message()));
  }
  ModelInfo& info = model->info_;
  info.name = name;
  info.embed_dim = shape->embed_dim;
  info.kdim = shape->kdim;
  info.vdim = shape->vdim;
  info.bias = shape->in_bias || shape->out_bias;
  auto heads = file.metadata.find("num_heads");
  if (heads == file.metadata.end()) {
    return absl::InvalidArgumentError(absl::StrCat(source,
                                                   ": __metadata__ has no num_heads (export with "
                                                   "scripts/export_model.py)"));
  }
  if (!absl::SimpleAtoi(heads->second, &info.num_heads) || info.num_heads <= 0 ||
      info.embed_dim % info.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": __metadata__ num_heads '", heads->second,
                     "' must be a positive divisor of embed_dim ", info.embed_dim));
  }
  return std::unique_ptr<const Model>(std::move(model));
}

absl::StatusOr<std::unique_ptr<const Model>> LoadModel(const std::string& name,
                                                       const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
  if (!file.ok()) return file.status();
  return ModelFromFile(name, *file, path);
}

}  // namespace attention
