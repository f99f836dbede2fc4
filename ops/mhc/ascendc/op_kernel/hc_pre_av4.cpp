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
  GM_ADDR ws = AscendC::GetUserWorkspace(workspace);
  AscendC::TPipe pipe;
  if ASCEND_IS_AIC {
    if (td.xCast) {   // bf16 x cast to float32 by the AIV cores (decode): a float32 projection onto fn
      mhc_av4::HcProjCube<float> cube;
      cube.Init(ws + td.wsFnOffset, fn, ws, &td, &pipe);
      cube.Process();
    } else {
      mhc_av4::HcProjCube<DTYPE_X> cube;
      cube.Init(x, fn, ws, &td, &pipe);
      cube.Process();
    }
  } else {
    mhc_av4::HcPreKernel<DTYPE_X, false> op;
    op.Init(x, fn, scale, base, cfg, y, post, comb, mix, rstd, ws, &td, &pipe);
    op.Process();
  }
}
