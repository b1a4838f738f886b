#include "tests/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <thread>

namespace attention {
namespace testing {
namespace {

using Clock = std::chrono::steady_clock;

// Forks and execs argv, with `env` added to the environment and stdout+stderr
// on a pipe, in the cgroup `cgroup_dir` if given; returns the pid.
pid_t Spawn(const std::vector<std::string>& argv, int* read_fd,
            const std::vector<std::string>& env = {}, const std::string& cgroup_dir = "") {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    if (!cgroup_dir.empty()) {  // "0": the writing process itself
      const int procs = open((cgroup_dir + "/cgroup.procs").c_str(), O_WRONLY);
      if (procs < 0 || write(procs, "0\n", 2) != 2) _exit(126);
      close(procs);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  *read_fd = fds[0];
  return pid;
}

// Appends what `fd` has to `out`, waiting up to `ms` for something.
void Drain(int fd, std::string* out, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, ms) <= 0) return;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out->append(buf, n);
}

// waitpid with a time limit: the exit code, -2 if killed by a signal, -1 on timeout.
int WaitFor(pid_t pid, double timeout_s, int fd, std::string* out) {
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (Clock::now() < end) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      if (fd >= 0) Drain(fd, out, 0);
      return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    }
    if (fd >= 0) {
      Drain(fd, out, 20);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return -1;
}

}  // namespace

std::string ServerBinary() { return ATTENTION_SERVER_BIN; }
std::string ClientBinary() { return ATTENTION_CLIENT_BIN; }

ServerProcess::ServerProcess(const std::vector<std::string>& flags,
                             const std::vector<std::string>& env, const std::string& cgroup_dir) {
  std::vector<std::string> argv = {ServerBinary(), "--listen", "127.0.0.1:0"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  pid_ = Spawn(argv, &out_fd_, env, cgroup_dir);
  if (pid_ < 0) return;
  static const std::regex kListening("listening on ([^;\\s]+);");
  const auto end = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < end) {
    Drain(out_fd_, &output_, 50);
    std::smatch m;
    if (std::regex_search(output_, m, kListening)) {
      target_ = m[1];
      return;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {  // exited at start
      Drain(out_fd_, &output_, 0);
      pid_ = -1;
      return;
    }
  }
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
}

int ServerProcess::Stop(int signal, double timeout_s) {
  if (pid_ <= 0) return -3;
  kill(pid_, signal);
  const int code = WaitFor(pid_, timeout_s, out_fd_, &output_);
  if (code == -1) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_ = -1;
  return code;
}

std::string ServerProcess::Output() {
  if (out_fd_ >= 0) Drain(out_fd_, &output_, 0);
  return output_;
}

void ServerProcess::CloseOutput() {
  Output();
  if (out_fd_ >= 0) close(out_fd_);
  out_fd_ = -1;
}

int RunCommand(const std::vector<std::string>& argv, std::string* out, double timeout_s) {
  int fd;
  const pid_t pid = Spawn(argv, &fd);
  if (pid < 0) return -3;
  out->clear();
  const int code = WaitFor(pid, timeout_s, fd, out);
  if (code == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  close(fd);
  return code;
}

}  // namespace testing
}  // namespace attention
