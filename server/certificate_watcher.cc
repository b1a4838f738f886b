#include "server/certificate_watcher.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace attention {
namespace server {
namespace {

// A rotation that fails validation is looked at again after this long before
// it is called broken: a set written file by file may have been caught
// half-way.
constexpr absl::Duration kSettle = absl::Milliseconds(500);

std::atomic<int64_t> g_certificate_reload_failures{0};

}  // namespace

// gRPC's FileWatcherCertificateProvider serves whatever the files hold, and a
// broken rotation would then fail every new connection. This watcher reads
// the operator's files, and only a set that validates as at start-up is
// handed to the provider, through a private directory (mkdtemp, 0700):
//
//   DIR/current -> gN                          (swapped atomically by rename)
//   DIR/gN/{cert,key,ca}.pem -> /proc/self/fd/F  (F: a memfd, 0600)
//
// The bytes live in memory files of the process: the directory holds links
// only, so no copy of the private key is left on disk, even after SIGKILL.
// gRPC reads key and certificate as two files; it compares their
// modification times (whole seconds) before and after, and retries when they
// differ. Each generation gets a modification time later than the last one,
// so a read that spans a swap is retried rather than served as a mixed pair.
// The previous generation's memory files stay open until the next swap, so
// that a path resolved just before a swap never reaches a reused descriptor.
class CertificateWatcher {
 public:
  // Copies `files` (validated) into a new private directory and starts
  // watching `config`'s files.
  static absl::StatusOr<std::shared_ptr<CertificateWatcher>> Start(const SecurityConfig& config,
                                                                   const TlsFiles& files) {
    const char* tmp = std::getenv("TMPDIR");
    const std::string base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    std::string dir = base + "/attention-server-tls-XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-cert: cannot make a private directory for the TLS files in ", base,
                       " (", std::strerror(errno), ")"));
    }
    std::shared_ptr<CertificateWatcher> watcher(new CertificateWatcher(config, std::move(dir)));
    if (absl::Status s = watcher->Install(files); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--tls-cert: ", s.message()));
    }
    // gRPC reads them by path: through /proc/self/fd, which must be there.
    absl::StatusOr<FileContents> key = ReadBounded(watcher->KeyPath(), "--tls-key");
    if (!key.ok() || key->text != files.key_pem) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-key: cannot hand the key to gRPC through ", watcher->KeyPath(),
                       " (is /proc mounted?)"));
    }
    watcher->seen_ = files.stamps;
    watcher->thread_ = std::thread([w = watcher.get()] { w->Run(); });
    return watcher;
  }

  ~CertificateWatcher() {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    for (int fd : current_fds_) close(fd);
    for (int fd : previous_fds_) close(fd);
  }

  CertificateWatcher(const CertificateWatcher&) = delete;
  CertificateWatcher& operator=(const CertificateWatcher&) = delete;

  // The private copies, for gRPC's FileWatcherCertificateProvider.
  std::string CertPath() const { return dir_ + "/current/cert.pem"; }
  std::string KeyPath() const { return dir_ + "/current/key.pem"; }
  std::string CaPath() const {
    return config_.tls_client_ca.empty() ? "" : dir_ + "/current/ca.pem";
  }

 private:
  using Stamps = std::array<FileStamp, 3>;

  CertificateWatcher(SecurityConfig config, std::string dir)
      : config_(std::move(config)), dir_(std::move(dir)) {}

  Stamps StampsNow() const {
    return {StampOfPath(config_.tls_cert), StampOfPath(config_.tls_key),
            config_.tls_client_ca.empty() ? FileStamp{} : StampOfPath(config_.tls_client_ca)};
  }

  void Run() {
    while (!stop_.WaitForNotificationWithTimeout(absl::Seconds(kCertificateRefreshSeconds))) {
      Check();
    }
  }

  // Takes a changed set of files that validates; refuses one that does not
  // (once per change).
  void Check() {
    while (true) {
      const Stamps before = StampsNow();
      if (before == seen_) return;
      absl::StatusOr<TlsFiles> files = ReadTlsFiles(config_);
      if (files.ok()) {
        seen_ = files->stamps;
        if (files->cert_pem == cert_pem_ && files->key_pem == key_pem_ &&
            files->ca_pem == ca_pem_) {
          return;  // touched, or put back as it was
        }
        if (absl::Status s = Install(*files); !s.ok()) {
          Refuse(s);
          return;
        }
        std::printf(
            "attention-server: --tls-cert %s: a new certificate (valid until %s) for new "
            "connections\n",
            config_.tls_cert.c_str(), FormatTime(X509_get0_notAfter(files->cert.get())).c_str());
        std::fflush(stdout);
        WarnAboutDates(config_.tls_cert, files->cert.get());
        return;
      }
      if (stop_.WaitForNotificationWithTimeout(kSettle)) return;
      if (StampsNow() != before) continue;  // still being written: read it again
      seen_ = before;
      Refuse(files.status());
      return;
    }
  }

  void Refuse(const absl::Status& problem) {
    g_certificate_reload_failures.fetch_add(1, std::memory_order_relaxed);
    std::fprintf(
        stderr, "attention-server: error: %s: keeping the previous %s\n",
        std::string(problem.message()).c_str(),
        config_.tls_client_ca.empty() ? "certificate and key" : "certificate, key and client CA");
    std::fflush(stderr);
  }

  // Writes `files` as a new generation and points DIR/current at it.
  absl::Status Install(const TlsFiles& files) {
    const std::string name = absl::StrCat("g", generation_ + 1);
    const std::string gen = absl::StrCat(dir_, "/", name);
    std::vector<int> fds;
    auto failed = [&](absl::string_view what) {
      const int err = errno;
      for (int fd : fds) close(fd);
      std::error_code ignored;
      std::filesystem::remove_all(gen, ignored);
      return absl::InternalError(absl::StrCat("cannot ", what, " for the TLS files in ", dir_, " (",
                                              std::strerror(err), ")"));
    };
    if (mkdir(gen.c_str(), 0700) != 0) return failed("make a directory");
    mtime_ = std::max<time_t>(std::time(nullptr), mtime_ + 1);
    const std::pair<const char*, const std::string*> outputs[] = {
        {"cert.pem", &files.cert_pem}, {"key.pem", &files.key_pem}, {"ca.pem", &files.ca_pem}};
    for (const auto& [file, text] : outputs) {
      if (text == &files.ca_pem && config_.tls_client_ca.empty()) continue;
      const int fd = MemoryFile(file, *text);
      if (fd < 0) return failed("make a memory file");
      fds.push_back(fd);
      if (symlink(absl::StrCat("/proc/self/fd/", fd).c_str(),
                  absl::StrCat(gen, "/", file).c_str()) != 0) {
        return failed("make a symbolic link");
      }
    }
    const std::string link = dir_ + "/current.new";
    unlink(link.c_str());
    if (symlink(name.c_str(), link.c_str()) != 0) return failed("make a symbolic link");
    if (rename(link.c_str(), (dir_ + "/current").c_str()) != 0) {
      return failed("swap a symbolic link");
    }
    if (generation_ > 0) {
      std::error_code ignored;
      std::filesystem::remove_all(absl::StrCat(dir_, "/g", generation_), ignored);
    }
    for (int fd : previous_fds_) close(fd);
    previous_fds_ = std::move(current_fds_);
    current_fds_ = std::move(fds);
    ++generation_;
    cert_pem_ = files.cert_pem;
    key_pem_ = files.key_pem;
    ca_pem_ = files.ca_pem;
    return absl::OkStatus();
  }

  // A memory file (0600) holding `text`, with this generation's modification
  // time; its descriptor, or -1 (errno set).
  int MemoryFile(const char* name, const std::string& text) const {
    const int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = write(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    const struct timespec times[2] = {{mtime_, 0}, {mtime_, 0}};
    if (done != text.size() || fchmod(fd, 0600) != 0 || futimens(fd, times) != 0) {
      const int err = errno != 0 ? errno : EIO;
      close(fd);
      errno = err;
      return -1;
    }
    return fd;
  }

  const SecurityConfig config_;
  const std::string dir_;
  absl::Notification stop_;
  std::thread thread_;
  // Written by Start before the thread starts, then only by the thread: not
  // shared, so not locked.
  Stamps seen_ = {};
  std::string cert_pem_, key_pem_, ca_pem_;      // what gRPC is given
  std::vector<int> current_fds_, previous_fds_;  // memory files of gN and g(N-1)
  int generation_ = 0;
  time_t mtime_ = 0;
};

absl::StatusOr<WatchedCertificates> WatchCertificates(const SecurityConfig& config,
                                                      const TlsFiles& files) {
  absl::StatusOr<std::shared_ptr<CertificateWatcher>> watcher =
      CertificateWatcher::Start(config, files);
  if (!watcher.ok()) return watcher.status();
  WatchedCertificates out;
  out.cert_path = (*watcher)->CertPath();
  out.key_path = (*watcher)->KeyPath();
  out.ca_path = (*watcher)->CaPath();
  out.watcher = std::move(*watcher);
  return out;
}

int64_t CertificateReloadFailures() {
  return g_certificate_reload_failures.load(std::memory_order_relaxed);
}

}  // namespace server
}  // namespace attention
