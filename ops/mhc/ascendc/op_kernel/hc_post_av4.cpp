// Kernel entry of HcPostAv4: f [T, D], residual [T, hc, D] (DTYPE_F), post [T, hc], comb [T, hc, hc] (float32)
// -> out [T, hc, D].
#include "kernel_operator.h"
#include "hc_post_kernel.h"

extern "C" __global__ __aicore__ void hc_post_av4(GM_ADDR f, GM_ADDR residual, GM_ADDR post, GM_ADDR comb,
                                                  GM_ADDR out, GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  (void)workspace;  // no workspace: everything lives in UB
  REGISTER_TILING_DEFAULT(mhc_av4::HcPostTilingData);
  GET_TILING_DATA_WITH_STRUCT(mhc_av4::HcPostTilingData, td, tiling);
  AscendC::TPipe pipe;
  mhc_av4::HcPostKernel<DTYPE_F> op;
  op.Init(f, residual, post, comb, out, &td, &pipe);
  op.Process();
}
