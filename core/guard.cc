#include "core/guard.h"

#include <exception>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attention {

absl::Status GuardStatus(absl::FunctionRef<absl::Status()> fn, absl::string_view out_of_memory) {
  try {
    return fn();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(out_of_memory);
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace attention
