#include "common/atomic_write.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/errors.h"

namespace sparseserve {

namespace {

// A new file path + ".tmp.<pid>.<n>", created exclusively (O_EXCL: never an existing file) with the
// mode a plain create gives (0666 less the umask); returns its descriptor and fills name.
int create_temporary(const std::string& path, std::string& name) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t salt = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  int err = 0;
  for (int attempt = 0; attempt < 64; ++attempt) {
    name = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string((salt + counter++) % 1000000007u);
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    err = errno;
    if (err != EEXIST) break;
  }
  throw ModelFileError(path, "cannot write (creating " + name + ": " + std::strerror(err) + ")");
}

// The file a write to `path` replaces: a symbolic link's target, followed link by link (relative
// targets from their link's folder) to a path that is not a link, which may not exist yet.
std::string replaced_file(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p = path;
  std::error_code ec;
  for (int hops = 0; hops < 40 && fs::is_symlink(p, ec); ++hops) {  // 40: the kernel's own limit
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) break;
    p = target.is_absolute() ? target : p.parent_path() / target;
  }
  return p.string();
}

}  // namespace

void write_file_atomically(const std::string& link_or_path, std::string_view text) {
  const std::string path = replaced_file(link_or_path);
  std::string tmp;
  const int fd = create_temporary(path, tmp);
  const auto fail = [&](int err, const char* what) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw ModelFileError(path, std::string("cannot write (") + what + " " + tmp + ": " + std::strerror(err) + ")");
  };
  // An existing file keeps its permission bits.
  struct stat old {};
  if (::stat(path.c_str(), &old) == 0 && ::fchmod(fd, old.st_mode & 07777) != 0) fail(errno, "setting the mode of");
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(n < 0 ? errno : ENOSPC, "writing");
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail(errno, "syncing");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw ModelFileError(path, "cannot write (closing " + tmp + ": " + std::strerror(err) + ")");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw ModelFileError(path, std::string("cannot write (rename: ") + std::strerror(err) + ")");
  }
}

void check_can_write_next_to(const std::string& path) {
  std::string tmp;
  const int fd = create_temporary(replaced_file(path), tmp);
  ::close(fd);
  ::unlink(tmp.c_str());
}

}  // namespace sparseserve
