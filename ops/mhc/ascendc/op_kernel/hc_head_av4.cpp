// Kernel entry of HcHeadAv4: x [T, hc, D], fn [hc, hc*D], scale [1], base [hc], cfg [hc_eps, norm_eps]
// -> y [T, D], mix [T, hc], rstd [T]. Same mixed kernel as hc_pre without post, comb and Sinkhorn.
#include "kernel_operator.h"
#include "hc_pre_kernel.h"

extern "C" __global__ __aicore__ void hc_head_av4(GM_ADDR x, GM_ADDR fn, GM_ADDR scale, GM_ADDR base, GM_ADDR cfg,
                                                  GM_ADDR y, GM_ADDR mix, GM_ADDR rstd, GM_ADDR workspace,
                                                  GM_ADDR tiling) {
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
    mhc_av4::HcPreKernel<DTYPE_X, true> op;
    op.Init(x, fn, scale, base, cfg, y, nullptr, nullptr, mix, rstd, ws, &td, &pipe);
    op.Process();
  }
}
