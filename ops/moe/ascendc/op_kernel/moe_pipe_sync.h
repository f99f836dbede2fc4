// Cross-pipe hand-over with an event ID the pipe hands out (TPipe::FetchEventID), never a literal: event IDs are a
// per-core resource shared with the queues and the library APIs' own syncs. Kept per family because each family's
// op_kernel/ directory ships on its own in the source package (the attention family has the same helper).
#pragma once
#include "kernel_operator.h"

namespace moe_av4 {

template <AscendC::HardEvent evt>
__aicore__ inline void PipeSync() {
  const AscendC::TEventID id = GetTPipePtr()->FetchEventID(evt);
  AscendC::SetFlag<evt>(id);
  AscendC::WaitFlag<evt>(id);
}

}  // namespace moe_av4
