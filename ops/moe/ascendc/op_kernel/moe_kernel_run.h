// What every MoE vector kernel entry does once CANN's entry macros have read its tiling: one pipe, the op's kernel
// object, Init with the entry's GM addresses (in OpDef order) + the tiling + the pipe, then Process.
#pragma once
#include "kernel_operator.h"

namespace moe_av4 {

template <class Kernel, class TilingData, class... Gm>
__aicore__ inline void RunKernel(const TilingData& td, Gm... gm) {
  AscendC::TPipe pipe;
  Kernel op;
  op.Init(gm..., &td, &pipe);
  op.Process();
}

}  // namespace moe_av4
