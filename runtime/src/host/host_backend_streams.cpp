// The host backend's streams (worker threads, host/host_stream.h) and events.
#include "host/host_backend_state.h"

namespace valet {

Result<Stream> HostBackend::create_stream() {
  auto stream = std::make_shared<host::HostStream>(&s_->delay_us);
  const auto id = reinterpret_cast<std::uintptr_t>(stream.get());
  std::lock_guard lock(s_->work_mu);
  s_->streams.emplace(id, std::move(stream));
  return Stream{id};
}

Status HostBackend::destroy_stream(Stream s) {
  std::shared_ptr<host::HostStream> doomed;
  {
    std::lock_guard lock(s_->work_mu);
    auto it = s_->streams.find(s.id);
    if (it == s_->streams.end()) return make_error(Errc::not_found, "destroy_stream: unknown stream");
    doomed = std::move(it->second);
    s_->streams.erase(it);
  }
  return {};  // the last holder (this call, or one enqueueing on it now) drains its queue
}

Result<Event> HostBackend::create_event() {
  auto event = std::make_shared<host::HostEvent>();
  const auto id = reinterpret_cast<std::uintptr_t>(event.get());
  std::lock_guard lock(s_->work_mu);
  s_->events.emplace(id, std::move(event));
  return Event{id};
}

Status HostBackend::destroy_event(Event e) {
  std::lock_guard lock(s_->work_mu);
  if (s_->events.erase(e.id) == 0) return make_error(Errc::not_found, "destroy_event: unknown event");
  return {};
}

Status HostBackend::record_event(Event e, Stream s) {
  auto ev = s_->event(e);
  auto st = s_->stream(s);
  if (!ev || !st) return make_error(Errc::not_found, "record_event: unknown event or stream");
  const std::uint64_t seq = ev->arm();
  st->enqueue([ev, seq] { ev->reach(seq); }, false);
  return {};
}

Result<bool> HostBackend::query_event(Event e) {
  auto ev = s_->event(e);
  if (!ev) return make_error(Errc::not_found, "query_event: unknown event");
  return ev->done();
}

Status HostBackend::synchronize_event(Event e) {
  auto ev = s_->event(e);
  if (!ev) return make_error(Errc::not_found, "synchronize_event: unknown event");
  ev->wait();
  return {};
}

Status HostBackend::stream_wait_event(Stream s, Event e) {
  auto ev = s_->event(e);
  auto st = s_->stream(s);
  if (!ev || !st) return make_error(Errc::not_found, "stream_wait_event: unknown event or stream");
  const std::uint64_t seq = ev->armed();  // the most recent record
  st->enqueue([ev, seq] { ev->wait_for(seq); }, false);
  return {};
}

Status HostBackend::synchronize_stream(Stream s) {
  auto st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "synchronize_stream: unknown stream");
  st->synchronize();
  return {};
}

Status HostBackend::enqueue_host_task(Stream s, std::function<void()> task) {
  auto st = s_->stream(s);
  if (!st) return make_error(Errc::not_found, "enqueue_host_task: unknown stream");
  st->enqueue(std::move(task), true);
  return {};
}

}  // namespace valet
