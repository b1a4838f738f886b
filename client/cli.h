// attention-client's commands. main.cc calls RunCli; each command is a
// function of the parsed arguments, so tests can drive them in-process too.
#ifndef CLIENT_CLI_H_
#define CLIENT_CLI_H_

#include "client/args.h"

namespace attention {
namespace client {

// Exit codes: 0 success, 1 the call failed (status printed), 2 bad usage.
int RunCli(int argc, char** argv);

}  // namespace client
}  // namespace attention

#endif  // CLIENT_CLI_H_
