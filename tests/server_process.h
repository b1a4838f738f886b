// Starts the real attention-server binary on 127.0.0.1 with a port the
// kernel picks (or where a --listen flag says), for end-to-end tests; stops
// it with a signal.
#ifndef TESTS_SERVER_PROCESS_H_
#define TESTS_SERVER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace attention {
namespace testing {

class ServerProcess {
 public:
  // Starts attention-server with --listen 127.0.0.1:0 and then `flags` (a
  // --listen among them wins) and waits for its "listening on" line. ok()
  // tells whether it came up. `env`: NAME=VALUE variables added to its
  // environment (test-only knobs such as ATTENTION_TEST_FAULT_DELAY_MS).
  // `cgroup_dir`: a cgroup (tests/cgroup.h) the server runs in.
  explicit ServerProcess(const std::vector<std::string>& flags,
                         const std::vector<std::string>& env = {},
                         const std::string& cgroup_dir = "");
  ~ServerProcess();  // SIGKILL if still running

  bool ok() const { return !target_.empty(); }
  // The address it listens on, as a gRPC target (127.0.0.1:PORT, unix:PATH).
  std::string target() const { return target_; }
  pid_t pid() const { return pid_; }

  // Sends `signal`, waits up to `timeout_s` for exit; returns the exit code,
  // or -1 on timeout (then kills it), -2 for death by a signal.
  int Stop(int signal, double timeout_s);
  // Everything the server printed so far (stdout and stderr).
  std::string Output();
  // Closes the reading end of the server's stdout and stderr, as a log
  // reader that exits does: the server's next write gets EPIPE.
  void CloseOutput();

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string target_;
  std::string output_;
};

// The environment of a server whose every computation first sleeps `ms`
// (test-only fault injection).
inline std::vector<std::string> FaultDelay(int ms) {
  return {"ATTENTION_TEST_FAULT_DELAY_MS=" + std::to_string(ms)};
}

// Runs a binary to completion with a time limit; returns the exit code (-1 on
// timeout) and fills `out` with its stdout and stderr.
int RunCommand(const std::vector<std::string>& argv, std::string* out, double timeout_s = 60);

// Paths of the built binaries and the repo's files.
std::string ServerBinary();
std::string ClientBinary();

}  // namespace testing
}  // namespace attention

#endif  // TESTS_SERVER_PROCESS_H_
