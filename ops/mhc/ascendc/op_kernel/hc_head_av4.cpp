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
  mhc_av4::RunHcPre<DTYPE_X, true>(x, fn, scale, base, cfg, y, nullptr, nullptr, mix, rstd, workspace, &td);
}
