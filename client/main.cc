// attention-client: the command-line client (see `attention-client --help`).
#include "client/cli.h"

int main(int argc, char** argv) { return attention::client::RunCli(argc, argv); }
