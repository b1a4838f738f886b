#include "client/load.h"

#include <cstdio>

namespace attention {
namespace client {

int RunLoad(const CliArgs&) {
  std::fprintf(stderr, "attention-client load: not built yet\n");
  return 2;
}

}  // namespace client
}  // namespace attention
