#include "core/model.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attention {

absl::StatusOr<ProjectionWeights> ProjectionFromTensors(
    const std::map<std::string, TensorView>& tensors, const std::string& source) {
  ProjectionWeights w;
  for (const auto& [tensor_name, view] : tensors) {
    std::optional<TensorView> ProjectionWeights::*slot = nullptr;
    for (const ProjectionTensor& t : kProjectionTensors) {
      if (tensor_name == t.state_dict_name) slot = t.member;
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
    w.*slot = view;
  }
  return w;
}

absl::StatusOr<std::unique_ptr<const Model>> ModelFromFile(const std::string& name,
                                                           const SafetensorsFile& file,
                                                           const std::string& source) {
  absl::StatusOr<ProjectionWeights> views = ProjectionFromTensors(file.tensors, source);
  if (!views.ok()) return views.status();
  auto model = std::unique_ptr<Model>(new Model);
  ProjectionWeights& w = model->weights_;
  for (const ProjectionTensor& p : kProjectionTensors) {  // kept as float32
    const std::optional<TensorView>& view = (*views).*p.member;
    if (!view) continue;
    FloatTensor& t = model->tensors_[p.state_dict_name];
    t.shape = view->shape;
    t.data.resize(view->byte_size / DTypeSize(view->dtype));
    ConvertToFloat32(*view, t.data.data());
    w.*p.member = t.view();
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
  absl::StatusOr<std::shared_ptr<const PreparedProjection>> prepared = PrepareProjection(w);
  if (!prepared.ok()) {
    return absl::Status(prepared.status().code(),
                        absl::StrCat(source, ": ", prepared.status().message()));
  }
  model->prepared_ = *std::move(prepared);
  w.prepared = model->prepared_.get();
  return std::unique_ptr<const Model>(std::move(model));
}

absl::StatusOr<std::unique_ptr<const Model>> LoadModel(const std::string& name,
                                                       const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
  if (!file.ok()) return file.status();
  return ModelFromFile(name, *file, path);
}

}  // namespace attention
