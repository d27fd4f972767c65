// The CUDA backend's streams and events: its own, and streams of the caller's checked before use.
#include <unistd.h>

#include "cuda/cuda_backend_state.h"
#include "cuda/cuda_context.h"

namespace valet::cuda {

bool CudaBackend::State::readable(std::uintptr_t addr) {
  if (probe[1] < 0) return true;  // no pipe: cannot tell, let the driver judge
  if (::write(probe[1], reinterpret_cast<const void*>(addr), 1) != 1) return false;
  char sink = 0;
  (void)!::read(probe[0], &sink, 1);
  return true;
}

Result<CUstream> CudaBackend::State::stream_of(Stream s, const char* what) {
  // 0 and the driver's special handles are always valid.
  if (s.id == 0) return CU_STREAM_LEGACY;
  const auto raw = reinterpret_cast<CUstream>(s.id);
  if (raw == CU_STREAM_LEGACY || raw == CU_STREAM_PER_THREAD) return raw;
  std::lock_guard lock(work_mu);
  if (own_streams.count(s.id) || foreign_streams.count(s.id)) return raw;
  if (auto it = retired_streams.find(s.id); it != retired_streams.end()) {
    // One of ours, destroyed: unless the driver has since put another stream at that address
    // (its unique id then differs). The address held a driver object, so the driver may look.
    unsigned long long uid = 0;
    if (d->cuStreamGetId(raw, &uid) != CUDA_SUCCESS || uid == it->second)
      return make_error(Errc::not_found, std::string(what) + ": unknown stream (destroyed)");
    retired_streams.erase(it);
  } else if (!readable(s.id)) {
    // A stream made by the caller (e.g. with the CUDA runtime) is used if it is a live stream
    // of this device's primary context. The readability test keeps garbage values away from
    // the driver, which would dereference them.
    return make_error(Errc::not_found, std::string(what) + ": unknown stream");
  }
  CUcontext owner = nullptr;
  const CUresult r = d->cuStreamGetCtx(raw, &owner);
  if (r != CUDA_SUCCESS)
    return make_error(Errc::not_found, std::string(what) + ": unknown stream (cuStreamGetCtx: " + result_name(r) + ")");
  if (owner != ctx)
    return make_error(Errc::not_found,
                      std::string(what) + ": the stream belongs to another context than this device's primary one");
  foreign_streams.insert(s.id);
  return raw;
}

Result<CUevent> CudaBackend::State::event_of(Event e, const char* what) {
  std::lock_guard lock(work_mu);
  if (!events.count(e.id)) return make_error(Errc::not_found, std::string(what) + ": unknown event");
  return reinterpret_cast<CUevent>(e.id);
}

Result<Stream> CudaBackend::create_stream() {
  VALET_CUDA_SCOPE();
  CUstream stream = nullptr;
  VALET_CU("cuStreamCreate", s_->d->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  unsigned long long uid = 0;
  if (const CUresult r = s_->d->cuStreamGetId(stream, &uid); r != CUDA_SUCCESS) {
    (void)s_->d->cuStreamDestroy(stream);
    return cu_error("cuStreamGetId", r);
  }
  const auto id = reinterpret_cast<std::uintptr_t>(stream);
  std::lock_guard lock(s_->work_mu);
  s_->own_streams[id] = uid;
  s_->retired_streams.erase(id);
  s_->foreign_streams.erase(id);
  return Stream{id};
}

Status CudaBackend::destroy_stream(Stream s) {
  VALET_CUDA_SCOPE();
  unsigned long long uid = 0;
  {
    std::lock_guard lock(s_->work_mu);
    auto it = s_->own_streams.find(s.id);
    if (it == s_->own_streams.end())
      return make_error(Errc::not_found, "destroy_stream: unknown stream (not made by this backend)");
    uid = it->second;
  }
  const auto stream = reinterpret_cast<CUstream>(s.id);
  VALET_CU("cuStreamSynchronize", s_->d->cuStreamSynchronize(stream));
  VALET_CU("cuStreamDestroy", s_->d->cuStreamDestroy(stream));
  std::lock_guard lock(s_->work_mu);
  s_->own_streams.erase(s.id);
  if (s_->retired_streams.size() >= kMaxRetiredStreams) s_->retired_streams.clear();
  s_->retired_streams[s.id] = uid;
  return {};
}

Result<Event> CudaBackend::create_event() {
  VALET_CUDA_SCOPE();
  CUevent event = nullptr;
  VALET_CU("cuEventCreate", s_->d->cuEventCreate(&event, CU_EVENT_DISABLE_TIMING));
  const auto id = reinterpret_cast<std::uintptr_t>(event);
  std::lock_guard lock(s_->work_mu);
  s_->events.insert(id);
  return Event{id};
}

Status CudaBackend::destroy_event(Event e) {
  VALET_CUDA_SCOPE();
  std::lock_guard lock(s_->work_mu);
  if (!s_->events.count(e.id)) return make_error(Errc::not_found, "destroy_event: unknown event");
  VALET_CU("cuEventDestroy", s_->d->cuEventDestroy(reinterpret_cast<CUevent>(e.id)));
  s_->events.erase(e.id);
  return {};
}

Status CudaBackend::record_event(Event e, Stream s) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "record_event");
  if (!ev.ok()) return ev.error();
  auto st = s_->stream_of(s, "record_event");
  if (!st.ok()) return st.error();
  VALET_CU("cuEventRecord", s_->d->cuEventRecord(ev.value(), st.value()));
  return {};
}

Result<bool> CudaBackend::query_event(Event e) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "query_event");
  if (!ev.ok()) return ev.error();
  const CUresult r = s_->d->cuEventQuery(ev.value());
  if (r == CUDA_SUCCESS) return true;
  if (r == CUDA_ERROR_NOT_READY) return false;
  return cu_error("cuEventQuery", r);
}

Status CudaBackend::synchronize_event(Event e) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "synchronize_event");
  if (!ev.ok()) return ev.error();
  VALET_CU("cuEventSynchronize", s_->d->cuEventSynchronize(ev.value()));
  return {};
}

Status CudaBackend::stream_wait_event(Stream s, Event e) {
  VALET_CUDA_SCOPE();
  auto ev = s_->event_of(e, "stream_wait_event");
  if (!ev.ok()) return ev.error();
  auto st = s_->stream_of(s, "stream_wait_event");
  if (!st.ok()) return st.error();
  VALET_CU("cuStreamWaitEvent", s_->d->cuStreamWaitEvent(st.value(), ev.value(), CU_EVENT_WAIT_DEFAULT));
  return {};
}

Status CudaBackend::synchronize_stream(Stream s) {
  VALET_CUDA_SCOPE();
  auto st = s_->stream_of(s, "synchronize_stream");
  if (!st.ok()) return st.error();
  VALET_CU("cuStreamSynchronize", s_->d->cuStreamSynchronize(st.value()));
  return {};
}

}  // namespace valet::cuda
