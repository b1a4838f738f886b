// attention-flood: many concurrent callers send large self-attention requests
// to a running server; prints the calls answered, refused (by the server's
// memory budget, by gRPC's transport) and failed otherwise, and the server's
// peak and final resident memory (its /proc/PID/status, so run it on the
// server's machine). Meanwhile an honest client on a connection of its own
// sends small calls one at a time (retrying UNAVAILABLE and resets 3 times):
// its calls answered and failed and their latency say whether the flood
// starves it.
//
//   attention-flood --target 127.0.0.1:50051 --pid PID --callers 48 --calls 2 --mib 50
//
// Each request is [B, 64, 1024] float32 (B chosen for --mib), 8 heads, no
// model: little compute per byte, so memory, not compute, is what it tests.
#include <algorithm>
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
  std::atomic<int> ok{0}, budget{0}, transport{0}, too_large{0}, other{0};
  std::string first_other;
  std::mutex mu;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&] {
      AttentionClient client(AttentionClient::ConnectAlone(target, int64_t{1} << 30));
      for (int i = 0; i < calls; ++i) {
        absl::StatusOr<attention::v1::AttentionResponse> r = client.SelfAttention(request);
        if (r.ok()) {
          ++ok;
        } else if (r.status().code() == absl::StatusCode::kResourceExhausted &&
                   absl::StartsWith(r.status().message(), attention::client::kQuotaCancelMessage)) {
          ++transport;
        } else if (r.status().code() == absl::StatusCode::kResourceExhausted &&
                   absl::StartsWith(r.status().message(), "memory budget")) {
          ++budget;
        } else if (r.status().code() == absl::StatusCode::kResourceExhausted &&
                   absl::StrContains(r.status().message(), "larger than max")) {
          ++too_large;
        } else {
          ++other;
          std::lock_guard<std::mutex> lock(mu);
          if (first_other.empty()) first_other = r.status().ToString();
        }
      }
    });
  }
  // The honest client: small calls, one at a time, on a connection of its own,
  // for as long as the flood lasts.
  std::atomic<bool> flooding{true};
  int honest_ok = 0, honest_failed = 0;
  std::vector<double> honest_ms;
  std::string honest_first_error;
  std::thread honest([&] {
    std::vector<float> small(16 * 64, 0.5f);
    attention::v1::SelfAttentionRequest r;
    *r.mutable_input() =
        attention::client::MakeTensor({1, 16, 64}, small.data(), attention::DType::kFloat32);
    r.mutable_options()->set_num_heads(4);
    constexpr int kRetries = 3;  // UNAVAILABLE and resets, as a production client does
    AttentionClient client(AttentionClient::ConnectAlone(target, int64_t{1} << 20, kRetries));
    attention::client::CallOptions options;
    options.retries = kRetries;
    while (flooding.load()) {
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<attention::v1::AttentionResponse> response = client.SelfAttention(r, options);
      honest_ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
      if (response.ok()) {
        ++honest_ok;
      } else if (++honest_failed == 1) {
        honest_first_error = response.status().ToString();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  for (std::thread& t : threads) t.join();
  flooding = false;
  honest.join();
  std::sort(honest_ms.begin(), honest_ms.end());
  const auto honest_at = [&](double q) {
    return honest_ms.empty() ? 0.0 : honest_ms[static_cast<size_t>(q * (honest_ms.size() - 1))];
  };
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the idle trimmer's period
  std::printf(
      "{\"callers\": %d, \"calls\": %d, \"request_mib\": %.1f, \"seconds\": %.2f, \"ok\": %d, "
      "\"refused_budget\": %d, \"refused_transport\": %d, \"refused_too_large\": %d, "
      "\"other_errors\": %d, "
      "\"rss_before_mib\": %.0f, \"peak_rss_mib\": %.0f, \"rss_after_mib\": %.0f, "
      "\"honest_ok\": %d, \"honest_failed\": %d, \"honest_p50_ms\": %.2f, "
      "\"honest_p99_ms\": %.1f, \"honest_max_ms\": %.1f}\n",
      callers, callers * calls, batch * kRow * 4.0 / (1 << 20), seconds, ok.load(), budget.load(),
      transport.load(), too_large.load(), other.load(), rss_before, StatusMiB(pid, "VmHWM"),
      StatusMiB(pid, "VmRSS"), honest_ok, honest_failed, honest_at(0.5), honest_at(0.99),
      honest_at(1.0));
  if (!honest_first_error.empty()) {
    std::fprintf(stderr, "honest client's first error: %s\n", honest_first_error.c_str());
  }
  if (!first_other.empty()) std::fprintf(stderr, "first other error: %s\n", first_other.c_str());
  return 0;
}
