// create_trace_file(): a trace goes to a new regular file only. The control socket lets a client
// name any path the service's user can write, so an existing file, a symlink, a FIFO (whose open
// would block the control thread until a reader comes) or a device is refused, never opened.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "valet/trace_recorder.h"

namespace valet {

namespace {

class FileSink final : public TraceSink {
 public:
  explicit FileSink(int fd) : fd_(fd) {}
  ~FileSink() override {
    if (fd_ >= 0) ::close(fd_);
  }
  Status write(std::string_view data) override {
    while (!data.empty()) {
      const ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return make_error(Errc::system_error, std::string("write: ") + std::strerror(errno));
      if (n == 0) return make_error(Errc::system_error, "write: the file takes no more bytes");
      data.remove_prefix(std::size_t(n));
    }
    return {};
  }
  Status close() override {
    const int fd = std::exchange(fd_, -1);
    if (fd >= 0 && ::close(fd) != 0) return make_error(Errc::system_error, std::string("close: ") + std::strerror(errno));
    return {};
  }

 private:
  int fd_;
};

// The path for messages: a NUL shows as \0, other control bytes as '?'.
std::string printable(const std::string& path) {
  std::string out;
  for (char c : path) {
    if (c == '\0') out += "\\0";
    else out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  return out;
}

Error refused(const std::string& path, const std::string& why) {
  return make_error(Errc::invalid_argument, "trace path '" + printable(path) + "' " + why);
}

Status check_trace_path(const std::string& path) {
  // std::string keeps a NUL that open() would stop at: "/tmp/a\0b" would silently write /tmp/a.
  if (path.find('\0') != std::string::npos) return refused(path, "contains a NUL byte");
  if (path.empty() || path[0] != '/') return refused(path, "is not absolute");
  if (path.back() == '/') return refused(path, "names a directory, not a file");
  for (std::size_t at = 0; at < path.size();) {
    const std::size_t end = std::min(path.find('/', at), path.size());
    if (path.compare(at, end - at, "..") == 0) return refused(path, "has a '..' component; name the directory directly");
    at = end + 1;
  }
  return {};
}

// What is already at `name` in `dir_fd`, for the refusal of an existing path.
std::string what_is_at(int dir_fd, const std::string& name) {
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return "something";
  if (S_ISLNK(st.st_mode)) return "a symlink";
  if (S_ISFIFO(st.st_mode)) return "a FIFO";
  if (S_ISDIR(st.st_mode)) return "a directory";
  if (S_ISREG(st.st_mode)) return "a file";
  return "a special file";
}

}  // namespace

Result<std::unique_ptr<TraceSink>> create_trace_file(const std::string& path, std::string* resolved) {
  VALET_TRY(check_trace_path(path));
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == 0 ? "/" : path.substr(0, slash), name = path.substr(slash + 1);
  if (name == ".") return refused(path, "names a directory, not a file");
  // O_NOFOLLOW guards only the last component; the directories are resolved once here, and the
  // file is created relative to the resolved directory, which is what the reply names.
  char real_dir[PATH_MAX];
  if (!::realpath(dir.c_str(), real_dir))
    return make_error(Errc::system_error, "trace directory " + printable(dir) + ": " + std::strerror(errno));
  const int dir_fd = ::open(real_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (dir_fd < 0)
    return make_error(Errc::system_error, "trace directory " + std::string(real_dir) + ": " + std::strerror(errno));
  // O_NONBLOCK: should anything but a new regular file ever be opened here, opening it must not
  // wait (a FIFO without a reader would).
  const int fd = ::openat(dir_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  const int open_errno = errno;
  const std::string there = fd < 0 && open_errno == EEXIST ? what_is_at(dir_fd, name) : std::string();
  ::close(dir_fd);
  const std::string file = (std::strcmp(real_dir, "/") == 0 ? std::string() : std::string(real_dir)) + "/" + name;
  if (fd < 0) {
    if (open_errno == EEXIST)
      return refused(path, "exists (" + there + "); a trace is written to a new file only, choose another name");
    if (open_errno == ELOOP) return refused(path, "is a symlink; a trace is written to a new file only");
    return make_error(Errc::system_error, "creating the trace file " + file + ": " + std::strerror(open_errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return refused(path, "is not a regular file");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  if (resolved) *resolved = file;
  return std::unique_ptr<TraceSink>(std::make_unique<FileSink>(fd));
}

}  // namespace valet
