// Cross-pipe hand-over with an event ID the pipe hands out (TPipe::FetchEventID), never a literal: event IDs are a
// per-core resource shared with the queues and the library APIs' own syncs. Shared by the kernels of every family:
// av4_opp_kernels (ops/ascendc_common/cmake/av4_opp.cmake) stages this directory next to each family's op_kernel/.
#pragma once
#include "kernel_operator.h"

namespace av4_common {

template <AscendC::HardEvent evt>
__aicore__ inline void PipeSync() {
  const AscendC::TEventID id = GetTPipePtr()->FetchEventID(evt);
  AscendC::SetFlag<evt>(id);
  AscendC::WaitFlag<evt>(id);
}

}  // namespace av4_common
