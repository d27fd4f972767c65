#include "move_executor.h"

namespace valet::detail {

Status MoveExecutor::hold(const CopyBatch& batch, Event& ev) {
  pool_.hold(batch.slots);
  auto taken = releases_.take_event();
  if (!taken.ok()) return taken.error();
  ev = *taken;
  return {};
}

Status MoveExecutor::queue(const CopyBatch& batch, Event ev) {
  Status st = batch.copies.empty() ? Status{} : backend_.copy(batch.copies, stream_);
  if (st.ok()) st = backend_.record_event(ev, stream_);
  return st;
}

void MoveExecutor::drain() { (void)backend_.synchronize_stream(stream_); }

Status MoveExecutor::finish(const CopyBatch& batch, Event ev, Status st) {
  if (st.ok()) {
    releases_.recycle_event(ev);
    return {};
  }
  if (ev.id != 0) (void)backend_.destroy_event(ev);  // a backend never hands out event 0
  pool_.unhold(batch.slots);
  return st;
}

}  // namespace valet::detail
