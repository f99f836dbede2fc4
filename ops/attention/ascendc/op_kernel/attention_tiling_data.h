// Tiling data of the attention family's AscendC kernels: plain POD structs shared by op_host (which fills them,
// attention_tiling.h) and op_kernel (GET_TILING_DATA_WITH_STRUCT). No functions here: the kernel compiler sees it.
#pragma once
#include <cstdint>

namespace av4_tiling {

constexpr uint32_t kMaxCores = 64;
// AV4SparseAttnSharedKV tiling keys (TILING_KEY_IS(0) / (1) in sparse_attn_shared_kv.cpp)
constexpr uint32_t ATTN_KEY_VECTOR = 0;   // float32: vector cores only
constexpr uint32_t ATTN_KEY_CUBE = 1;     // bf16 / fp16: Q·Kᵀ and P·V on the Cube (mixed AIC/AIV)     // 910B: up to 48 AIV; 910_93 (per die): 48

struct SparseAttnTiling {
  uint32_t B, S, H, D, N, W, K, ratio, cmpOffset, startPos, nCmp;
  float scale;
  uint32_t dAlign;       // D rounded to 16: whole 32-byte blocks as float32 and as bf16
  uint32_t headGroup;    // heads per pass (q + accumulator of a group live in UB); last group may be smaller
  uint32_t numHeadGroups;
  uint32_t entryBlock;   // KV rows gathered per online-softmax step (double-buffered)
  uint32_t entryAlign;   // entryBlock rounded to 8 (float scores row)
  uint32_t listAlign;    // W and K each rounded to 8 (int32 index lists: window at 0, compressed at W rounded)
  uint32_t usedCores;    // key 0: AIV cores; key 1: groups (1 AIC + 2 AIV)
  uint64_t ubUsed;       // bytes the kernel's (vector side's) InitBuffer calls reserve
  uint32_t rowSplit[kMaxCores + 1];
  // tiling key 1 (16-bit q/kv): Q·Kᵀ and P·V on the Cube (SparseAttnCube / SparseAttnVector in the kernel)
  uint32_t tilingKey;    // 0: vector-only kernel (float32), 1: mixed AIC/AIV
  uint32_t mAlign;       // headGroup rounded to 16 (M of both Cube products)
  uint32_t headHalf;     // heads of a group per vector sub-block: sub-block 0 takes ceil(hg/2), 1 the rest
  uint32_t dTiles;       // 128-column tiles of dAlign (N of P·V)
  uint64_t l1Used;       // Cube-core L1 bytes
  uint64_t wsPerGroup;   // workspace bytes per group: S, P and O slots (two each)
};

// Mixed AIC/AIV indexer (lightning_indexer_v4.cpp): one Cube core + its two vector cores per group. Work unit: a
// pair of consecutive query rows of one batch (row 2j for vector sub-block 0, 2j+1 for sub-block 1); the Cube scores
// both rows' heads against a block of keyBlock keys in one [mRows x d] x [d x keyBlock] product.
struct IndexerTiling {
  uint32_t B, S, H, d, N, topk, ratio, startPos;
  uint32_t dAlign;       // d rounded to 16 (K of the Cube product; zero-padded in L1)
  uint32_t hAlign;       // H rounded to 8 (head weights, float)
  uint32_t mAlign;       // 2H rounded to 16 (M of the Cube product: both rows' heads)
  uint32_t kTile;        // K elements per L0A/L0B pass (128 for 16-bit inputs, 64 for float32)
  uint32_t keyBlock;     // N of the Cube product = keys per step (128: one base tile)
  uint32_t topkAlign;    // topk rounded to 32 (the final ascending-id Sort works on 32-element groups)
  uint32_t pairs;        // B * ceil(S / 2)
  uint32_t usedGroups;   // blockDim of the mixed launch (<= AIC cores)
  uint64_t ubUsed;       // vector-core UB bytes
  uint64_t l1Used;       // Cube-core L1 bytes
  uint64_t wsPerGroup;   // workspace bytes per group: 2 score slots of [mAlign, keyBlock] float
  uint32_t pairSplit[kMaxCores + 1];
};

struct CompressTiling {
  uint32_t B, S, c, ratio, overlap, width, nBlocks, slots;
  float eps;
  uint32_t chanGroup;     // channels per pass (multiple of 16); last pass takes the tail
  uint32_t numChanGroups;
  uint32_t cAlign;        // c rounded to 16
  uint32_t usedCores;
  uint64_t ubUsed;
  uint32_t itemSplit[kMaxCores + 1];   // items = (b, block) pairs
};

}  // namespace av4_tiling
