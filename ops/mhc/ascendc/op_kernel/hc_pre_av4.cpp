// Kernel entry of HcPreAv4: x [T, hc, D] (DTYPE_X: float or bfloat16_t), fn, scale, base, cfg (float32)
// -> y [T, D], post [T, hc], comb [T, hc, hc], mix [T, M], rstd [T]. mix and rstd feed the backward.
#include "kernel_operator.h"
#include "hc_pre_kernel.h"

extern "C" __global__ __aicore__ void hc_pre_av4(GM_ADDR x, GM_ADDR fn, GM_ADDR scale, GM_ADDR base, GM_ADDR cfg,
                                                 GM_ADDR y, GM_ADDR post, GM_ADDR comb, GM_ADDR mix, GM_ADDR rstd,
                                                 GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  (void)workspace;  // no workspace: everything lives in UB
  REGISTER_TILING_DEFAULT(mhc_av4::HcPreTilingData);
  GET_TILING_DATA_WITH_STRUCT(mhc_av4::HcPreTilingData, td, tiling);
  AscendC::TPipe pipe;
  mhc_av4::HcPreKernel<DTYPE_X, false> op;
  op.Init(x, fn, scale, base, cfg, y, post, comb, mix, rstd, &td, &pipe);
  op.Process();
}
