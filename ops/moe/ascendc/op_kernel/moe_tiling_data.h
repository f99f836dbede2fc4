// Tiling data of the MoE AscendC kernels: plain structs shared by op_host (written by the tiling functions) and
// op_kernel (read with GET_TILING_DATA_WITH_STRUCT). Fixed-width fields only; no CANN headers.
#pragma once
#include <cstdint>

namespace moe_av4 {

// One tiling key (0) per op: the data dtype is a compile-time parameter of the kernel binary (DTYPE_X from the
// OpDef's dtype list), not a runtime key; a non-zero key would need a TILING_KEY_IS branch in the kernel, or the
// launch finds no binary for it.
constexpr uint64_t MOE_TILING_KEY = 0;

// Rows [0, total) split over usedCores: the first bigCores cores take rowsSmall + 1 rows, the rest rowsSmall.
struct MoeRowSplit {
  int64_t total;
  int64_t usedCores;
  int64_t rowsSmall;
  int64_t bigCores;
};

// MoeGatingTopKAv4: logits [T, E] -> y [T, k] f32, expert_idx [T, k] int32, score [T, E] f32.
struct MoeGatingTopKTilingData {
  MoeRowSplit split;         // over tokens
  int64_t experts;           // E
  int64_t expertsAlign;      // E rounded up to 8 floats (32 B)
  int64_t k;
  int64_t rowsPerLoop;       // tokens per UB pass (double-buffered input queue)
  int64_t tableCols;         // tid2eid columns (hash layers), 0 otherwise
  int32_t normType;          // 0 softmax, 1 sigmoid, 2 sqrt(softplus)
  int32_t groupCount;
  int32_t kGroup;
  int32_t groupSelectMode;   // 0 max, 1 sum of top-2
  int32_t hasBias;
  int32_t hashed;
  float routedScalingFactor;
  float eps;
  uint32_t ubBytes;          // UB the kernel allocates (checked against the platform's UB by the tiling)
  uint32_t pad0;
};

// MoeInitRoutingAv4 (MoeInitRoutingV2 semantics): x [T, H], expert_idx [T, k] -> expanded_x, expanded_row_idx,
// tokens_count_or_cumsum, tokens_before_capacity.
struct MoeInitRoutingTilingData {
  MoeRowSplit split;         // over the N = T*k flattened (token, k) rows; chunks are contiguous and ordered
  int64_t tokens;            // T
  int64_t k;
  int64_t hidden;            // H
  int64_t experts;           // E
  int64_t capacity;          // C (drop/pad)
  int64_t outRows;           // rows of expanded_x: E*C (drop/pad) or min(activeNum, N) / N (dropless)
  int64_t idsPerLoop;        // expert ids staged in UB per pass (histogram / destination phases)
  int64_t histStride;        // int32 elements per core row of the histogram workspace (32 B aligned, >= E + 1)
  int64_t hTile;             // elements of a row moved per UB buffer (32 B aligned; last tile is the tail)
  int64_t hTiles;            // ceil(H / hTile)
  int64_t hTail;             // elements in the last tile
  int32_t dropPad;
  int32_t countFlag;         // 1 cumsum, otherwise count
  int32_t elemBytes;         // 2 or 4
  uint32_t ubBytes;
  uint64_t workspaceBytes;   // user workspace (histograms of every core)
};

// MoeFinalizeRoutingAv4 (MoeFinalizeRoutingV2 semantics).
struct MoeFinalizeRoutingTilingData {
  MoeRowSplit split;         // over tokens
  int64_t tokens;            // T
  int64_t k;
  int64_t hidden;            // H
  int64_t expandedRows;      // rows of expanded_x (R, or E*C)
  int64_t hTile;
  int64_t hTiles;
  int64_t hTail;
  int32_t dropPadMode;       // 0..3 (0/1 column-arranged row index, 2/3 row-arranged)
  int32_t hasX1;
  int32_t hasX2;
  int32_t hasBias;
  int32_t elemBytes;
  uint32_t ubBytes;
};

// L1 bytes reserved by GroupedMatmulAv4 for its zero fractal (rows past the last group are zero-filled from a zero
// L0C tile made by Mmad of zero fractals).
constexpr uint32_t kGmmZeroL1Bytes = 16384;

// GroupedMatmulAv4 (split_item 3, group_type 0): x [M, K], w [E, K, N] (or [E, N, K]), group_list [E].
// Work = tiles of (group, row block of singleM = baseM, column block of singleN = baseN) enumerated in order and
// dealt round-robin to the AIC cores; group sizes are only known on device, so the kernel enumerates them. Each
// tile runs GM -> L1 -> L0A/L0B -> Mmad -> L0C -> GM over K in baseK steps (grouped_matmul_av4.cpp).
struct GroupedMatmulTilingData {
  int64_t m;
  int64_t k;
  int64_t n;
  int64_t groups;
  int64_t singleM;           // rows per block (multiple of 16)
  int64_t singleN;           // columns per block (multiple of 16)
  int64_t baseM;             // L0 tile: baseM x baseK (L0A), baseK x baseN (L0B), baseM x baseN (L0C, float32)
  int64_t baseN;
  int64_t baseK;
  int64_t depthA1;           // L1 / L0A / L0B buffering depth in base tiles (2: ping-pong)
  int64_t depthB1;
  int64_t usedCores;
  int32_t groupListType;     // 0 cumsum, 1 count
  int32_t transposeW;
  int32_t elemBytes;
  uint32_t l1Bytes;          // L1 the block tiling needs
  uint32_t l0aBytes;
  uint32_t l0bBytes;
  uint32_t l0cBytes;
  uint32_t pad0;
};

}  // namespace moe_av4
