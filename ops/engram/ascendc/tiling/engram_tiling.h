// Host tiling of the Engram AscendC kernels in plain C++ (no CANN headers): op_host/engram_av4_tiling.cpp feeds it
// the AIV core count and UB size read from the platform; tests/ops/test_engram_ascendc.py compiles it with g++ and
// checks many shapes (UB budget, alignment, every item on exactly one core).
#pragma once
#include <cstdint>

#include "../../../ascendc_common/op_host/aiv_platform.h"
#include "../op_kernel/engram_tiling_data.h"

namespace engram_av4 {

using av4_host::AivPlatform;   // the AIV core count and UB size op_host reads from the platform

// UB bytes the kernels allocate for a tiling (recomputed from the buffer fields).
uint64_t EngramGateUbBytes(const EngramGateTilingData& td);
uint64_t EngramDequantUbBytes(const EngramDequantTilingData& td);

// false (and *why set) when the shape is outside what the kernels support; never exceeds p.ubBytes.
bool EngramGateTiling(int64_t T, int64_t D, int32_t hc, int32_t xBytes, float eps, const AivPlatform& p,
                      EngramGateTilingData* td, const char** why);
bool EngramDequantTiling(int64_t N, int64_t L, int64_t nScales, int32_t yBytes, const AivPlatform& p,
                         EngramDequantTilingData* td, const char** why);

}  // namespace engram_av4
