#include "move_executor.h"

namespace valet::detail {

Status MoveExecutor::queue(const CopyBatch& batch, Event& ev) {
  pool_.hold(batch.slots);
  auto taken = releases_.take_event();
  Status st = taken.ok() ? Status{} : Status(taken.error());
  if (st.ok() && !batch.copies.empty()) st = backend_.copy(batch.copies, stream_);
  if (st.ok()) st = backend_.record_event(*taken, stream_);
  if (st.ok()) {
    ev = *taken;
    return {};
  }
  // Whatever was queued must be done before the slots may be unmapped or reused.
  (void)backend_.synchronize_stream(stream_);
  if (taken.ok()) (void)backend_.destroy_event(*taken);
  pool_.unhold(batch.slots);
  return st;
}

Status MoveExecutor::finish(const CopyBatch& batch, Event ev, Status st) {
  if (st.ok()) {
    releases_.recycle_event(ev);
    return {};
  }
  (void)backend_.synchronize_stream(stream_);
  (void)backend_.destroy_event(ev);
  pool_.unhold(batch.slots);
  return st;
}

}  // namespace valet::detail
