// Host tiling of the MoE AscendC kernels in plain C++ (no CANN headers). op_host/moe_av4_tiling.cpp feeds it the
// core counts and on-chip memory sizes read from the platform (PlatformAscendC: GetCoreNumAiv/Aic, GetCoreMemSize
// for UB, L1, L0A/B/C) — never hard-coded; tests/ops/test_moe_ascendc.py compiles it with g++ and checks many
// shapes and platforms (UB/L1/L0 budgets, 32-byte alignment, every row on exactly one core, tails, core split).
#pragma once
#include <cstdint>

#include "../op_kernel/moe_tiling_data.h"

namespace moe_av4 {

constexpr int64_t kBlockBytes = 32;      // UB/GM block granularity of DataCopy
constexpr int64_t kMaxTopK = 64;         // MoeGatingTopK hash variant limit (k <= 64)

struct MoePlatform {
  uint32_t aivCores;   // GetCoreNumAiv()
  uint32_t aicCores;   // GetCoreNumAic()
  uint64_t ubBytes;    // GetCoreMemSize(UB)
  uint64_t l1Bytes;    // GetCoreMemSize(L1)
  uint64_t l0aBytes;   // GetCoreMemSize(L0_A)
  uint64_t l0bBytes;   // GetCoreMemSize(L0_B)
  uint64_t l0cBytes;   // GetCoreMemSize(L0_C)
};

// A 910B / 910C (910_93) platform of `aivCores` AIV cores (one AIC per two) and `ubBytes` of UB with the chips'
// L1 (512 KB) and L0A / L0B / L0C (64 / 64 / 128 KB): the stand-in host build (its platform reports no AIC count and
// no L1 / L0 sizes) and the emulator drivers run on it.
inline MoePlatform Platform910B(uint32_t aivCores, uint64_t ubBytes) {
  return MoePlatform{aivCores, aivCores / 2, ubBytes, 524288, 65536, 65536, 131072};
}

// Balanced split of `total` rows over at most `cores` cores, at least `minRows` rows per used core (fewer cores
// when the work is small). Row r belongs to the core returned by SplitOwner.
MoeRowSplit SplitRows(int64_t total, int64_t cores, int64_t minRows);
void SplitRange(const MoeRowSplit& s, int64_t core, int64_t* begin, int64_t* count);
int64_t SplitOwner(const MoeRowSplit& s, int64_t row);

// UB bytes each kernel allocates for a tiling (recomputed from the fields; what the kernel's InitBuffer calls sum to).
uint64_t GatingUbBytes(const MoeGatingTopKTilingData& td);
uint64_t InitRoutingUbBytes(const MoeInitRoutingTilingData& td);
uint64_t FinalizeUbBytes(const MoeFinalizeRoutingTilingData& td);
// L1 / L0 bytes of the grouped-matmul block tiling (double-buffered L0A/L0B, single L0C).
void GroupedMatmulOnChipBytes(const GroupedMatmulTilingData& td, uint64_t* l1, uint64_t* l0a, uint64_t* l0b,
                              uint64_t* l0c);

// Each returns false and sets *why when the configuration is unsupported; on success the tiling fits the
// platform's memories.
bool GatingTopKTiling(int64_t T, int64_t E, int64_t k, int32_t normType, int32_t groupCount, int32_t kGroup,
                      int32_t groupSelectMode, bool hasBias, bool hashed, int64_t tableCols, float scale, float eps,
                      int32_t inBytes, const MoePlatform& p, MoeGatingTopKTilingData* td, const char** why);

bool InitRoutingTiling(int64_t T, int64_t k, int64_t H, int64_t E, int64_t capacity, int64_t activeNum,
                       int32_t dropPad, int32_t countFlag, int32_t elemBytes, const MoePlatform& p,
                       MoeInitRoutingTilingData* td, const char** why);

bool FinalizeRoutingTiling(int64_t T, int64_t k, int64_t H, int64_t expandedRows, int32_t dropPadMode, bool hasX1,
                           bool hasX2, bool hasBias, int32_t elemBytes, const MoePlatform& p,
                           MoeFinalizeRoutingTilingData* td, const char** why);

bool GroupedMatmulTiling(int64_t M, int64_t K, int64_t N, int64_t groups, int32_t groupListType, bool transposeW,
                         int32_t elemBytes, const MoePlatform& p, GroupedMatmulTilingData* td, const char** why);

// Enumerate grouped-matmul blocks for concrete group sizes (what the kernel does on device): calls
// f(group, rowBegin, rows, colBegin, cols, core) for every block in the kernel's order.
template <class F>
void ForEachGmmBlock(const GroupedMatmulTilingData& td, const int64_t* groupRows, F&& f) {
  int64_t block = 0, row0 = 0;
  for (int64_t g = 0; g < td.groups; ++g) {
    const int64_t rows = groupRows[g];
    for (int64_t mb = 0; mb < rows; mb += td.singleM)
      for (int64_t nb = 0; nb < td.n; nb += td.singleN, ++block) {
        const int64_t mr = rows - mb < td.singleM ? rows - mb : td.singleM;
        const int64_t nc = td.n - nb < td.singleN ? td.n - nb : td.singleN;
        f(g, row0 + mb, mr, nb, nc, block % td.usedCores);
      }
    row0 += rows;
  }
}

}  // namespace moe_av4
