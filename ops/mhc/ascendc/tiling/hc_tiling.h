// Host tiling of the mHC AscendC kernels in plain C++ (no CANN headers): op_host/mhc_av4_tiling.cpp feeds it the
// AIV core count and UB size read from the platform; tests/ops/test_mhc_ascendc.py compiles it with g++ and checks
// many shapes (UB budget, alignment, every token on exactly one core, balanced split).
#pragma once
#include <cstdint>

#include "../../../ascendc_common/op_host/aiv_platform.h"
#include "../op_kernel/mhc_tiling_data.h"

namespace mhc_av4 {

using av4_host::AivPlatform;   // the AIV core count and UB size op_host reads from the platform

// UB bytes the kernel allocates for this tiling (recomputed from the buffer fields).
uint64_t HcPreUbBytes(const HcPreTilingData& td);
uint64_t HcPostUbBytes(const HcPostTilingData& td);

// false (and *why set) when the shape is outside what the kernels support; never exceeds p.ubBytes.
bool HcPreTiling(int64_t T, int64_t D, int32_t hc, int32_t xBytes, bool head, const AivPlatform& p,
                 HcPreTilingData* td, const char** why);
bool HcPostTiling(int64_t T, int64_t D, int32_t hc, int32_t xBytes, const AivPlatform& p, HcPostTilingData* td,
                  const char** why);

}  // namespace mhc_av4
