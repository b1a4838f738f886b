// attention-flood: many concurrent callers send large self-attention requests
// to a running server; prints the calls answered, refused (by the server's
// memory budget, by gRPC's transport) and failed otherwise, and the server's
// peak and final resident memory (its /proc/PID/status, so run it on the
// server's machine).
//
//   attention-flood --target 127.0.0.1:50051 --pid PID --callers 48 --calls 2 --mib 50
//
// Each request is [B, 64, 1024] float32 (B chosen for --mib), 8 heads, no
// model: little compute per byte, so memory, not compute, is what it tests.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "client/client.h"

namespace {

// A field of /proc/PID/status in MiB (VmRSS, VmHWM), or -1.
double StatusMiB(int pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024;
  }
  return -1;
}

int Usage() {
  std::fprintf(stderr,
               "usage: attention-flood --target HOST:PORT --pid PID [--callers N (48)] "
               "[--calls N each (2)] [--mib N per request (50)]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target;
  int pid = 0, callers = 48, calls = 2, mib = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--target") {
      target = value;
    } else if (flag == "--pid") {
      pid = std::stoi(value);
    } else if (flag == "--callers") {
      callers = std::stoi(value);
    } else if (flag == "--calls") {
      calls = std::stoi(value);
    } else if (flag == "--mib") {
      mib = std::stoi(value);
    } else {
      return Usage();
    }
  }
  if (target.empty() || pid <= 0 || argc % 2 == 0) return Usage();
  using attention::client::AttentionClient;
  constexpr int64_t kRow = 64 * 1024;  // floats of one batch entry
  const int64_t batch = std::max<int64_t>(1, (int64_t{mib} << 20) / (4 * kRow));
  std::vector<float> x(batch * kRow);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (float& v : x) v = dist(rng);
  attention::v1::SelfAttentionRequest request;
  *request.mutable_input() =
      attention::client::MakeTensor({batch, 64, 1024}, x.data(), attention::DType::kFloat32);
  request.mutable_options()->set_num_heads(8);

  const double rss_before = StatusMiB(pid, "VmRSS");
  std::atomic<int> ok{0}, budget{0}, transport{0}, other{0};
  std::string first_other;
  std::mutex mu;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&] {
      AttentionClient client(AttentionClient::Connect(target, int64_t{1} << 30));
      for (int i = 0; i < calls; ++i) {
        absl::StatusOr<attention::v1::AttentionResponse> r = client.SelfAttention(request);
        if (r.ok()) {
          ++ok;
        } else if (r.status().code() == absl::StatusCode::kResourceExhausted) {
          ++(absl::StrContains(r.status().message(), "memory budget") ? budget : transport);
        } else {
          ++other;
          std::lock_guard<std::mutex> lock(mu);
          if (first_other.empty()) first_other = r.status().ToString();
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::printf(
      "{\"callers\": %d, \"calls\": %d, \"request_mib\": %.1f, \"seconds\": %.2f, \"ok\": %d, "
      "\"refused_budget\": %d, \"refused_transport\": %d, \"other_errors\": %d, "
      "\"rss_before_mib\": %.0f, \"peak_rss_mib\": %.0f, \"rss_after_mib\": %.0f}\n",
      callers, callers * calls, batch * kRow * 4.0 / (1 << 20), seconds, ok.load(), budget.load(),
      transport.load(), other.load(), rss_before, StatusMiB(pid, "VmHWM"),
      StatusMiB(pid, "VmRSS"));
  if (!first_other.empty()) std::fprintf(stderr, "first other error: %s\n", first_other.c_str());
  return 0;
}
