// Kernel entry of HcPreAv4: x [T, hc, D] (DTYPE_X: float or bfloat16_t), fn, scale, base, cfg (float32)
// -> y [T, D], post [T, hc], comb [T, hc, hc], mix [T, M], rstd [T]. mix and rstd feed the backward.
// Mixed kernel: the AIC cores project x . fn^T on the Cube unit (hc_pre_cube.h), the AIV cores do the rest
// (hc_pre_kernel.h); they meet through cross-core flags and the user workspace (fn split, partial projections).
#include "kernel_operator.h"
#include "hc_pre_kernel.h"

extern "C" __global__ __aicore__ void hc_pre_av4(GM_ADDR x, GM_ADDR fn, GM_ADDR scale, GM_ADDR base, GM_ADDR cfg,
                                                 GM_ADDR y, GM_ADDR post, GM_ADDR comb, GM_ADDR mix, GM_ADDR rstd,
                                                 GM_ADDR workspace, GM_ADDR tiling) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
  REGISTER_TILING_DEFAULT(mhc_av4::HcPreTilingData);
  GET_TILING_DATA_WITH_STRUCT(mhc_av4::HcPreTilingData, td, tiling);
  mhc_av4::RunHcPre<DTYPE_X, false>(x, fn, scale, base, cfg, y, post, comb, mix, rstd, workspace, &td);
}
