// attention-client load: the load tester (load.cc names the files of its parts).
#ifndef CLIENT_LOAD_H_
#define CLIENT_LOAD_H_

#include "client/cli.h"

namespace attention {
namespace client {

// Runs `attention-client load ...`; returns the exit code.
int RunLoad(const CliArgs& args);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_LOAD_H_
