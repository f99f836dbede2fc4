// Tiling of GroupedMatmulAv4 = our block split + the Matmul API's cube tiling. Include after the header that defines
// AscendC::tiling::TCubeTiling ("kernel_tiling/kernel_tiling.h" in kernels, "tiling/tiling_api.h" on the host, or
// the stand-ins).
#pragma once
#include "moe_tiling_data.h"

namespace moe_av4 {

struct GroupedMatmulKernelTiling {
  GroupedMatmulTilingData gmm;
  AscendC::tiling::TCubeTiling cube;   // for one singleM x singleN x K block (tails via SetSingleShape)
};

}  // namespace moe_av4
