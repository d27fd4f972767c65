// The host backend's lifetime and properties (the emulation itself: valet/host_backend.h).
#include "host/host_backend_state.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace valet {

using host::kMaxBytes;
using host::kPage;
using host::sys_error;

HostBackend::HostBackend(HostBackendOptions options) : s_(std::make_unique<State>()) {
  s_->options = options;
  s_->delay_us.store(options.task_delay.count());
  s_->default_stream = std::make_shared<host::HostStream>(&s_->delay_us);
  s_->page_count = options.capacity_bytes / kPage;
  s_->retain_limit = std::min(options.retained_bytes / kPage, s_->page_count);
  if (s_->page_count == 0) {
    s_->init = make_error(Errc::invalid_argument, "host backend: capacity below one 2 MiB page");
    return;
  }
  if (options.capacity_bytes > kMaxBytes) {
    s_->init = make_error(Errc::invalid_argument,
                          "host backend: a capacity of " + std::to_string(options.capacity_bytes) +
                              " bytes is more than the emulation can back (at most " +
                              std::to_string(kMaxBytes >> 40) + " TiB, the most address space it reserves)");
    return;
  }
  s_->fd = memfd_create("valet-host-vmm", MFD_CLOEXEC);
  if (s_->fd < 0) {
    s_->init = sys_error("memfd_create");
    return;
  }
  s_->index_count = std::min(4 * s_->page_count, kMaxBytes / kPage);
  if (ftruncate(s_->fd, off_t(s_->index_count * kPage)) != 0) {
    s_->init = sys_error("ftruncate");
    return;
  }
}

HostBackend::~HostBackend() {
  // Queued work may still touch mappings: finish it before tearing anything down.
  {
    std::lock_guard lock(s_->work_mu);
    s_->streams.clear();
  }
  s_->default_stream.reset();
  for (auto& [va, bytes] : s_->reservations) munmap(reinterpret_cast<void*>(va), bytes);
  if (s_->fd >= 0) close(s_->fd);
}

Status HostBackend::status() const { return s_->init; }

std::string HostBackend::name() const {
  return "host (memfd emulation, " + std::to_string(s_->options.capacity_bytes >> 20) + " MiB)";
}

Capabilities HostBackend::capabilities() const {
  return Capabilities{.host_accessible = true, .device_kernels = false, .real_device = false};
}

void HostBackend::set_task_delay(std::chrono::microseconds delay) { s_->delay_us.store(delay.count()); }

std::size_t HostBackend::allocated_bytes() const {
  struct stat st {};
  if (s_->fd < 0 || fstat(s_->fd, &st) != 0) return 0;
  return std::size_t(st.st_blocks) * 512;
}

std::size_t HostBackend::retained_pages() const {
  std::lock_guard lock(s_->mu);
  return s_->retained_count;
}

std::size_t HostBackend::pages_in_use() const {
  std::lock_guard lock(s_->mu);
  return s_->in_use;
}

}  // namespace valet
