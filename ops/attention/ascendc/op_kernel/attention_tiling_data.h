// Tiling data of the attention family's AscendC kernels: plain POD structs shared by op_host (which fills them,
// attention_tiling.h) and op_kernel (GET_TILING_DATA_WITH_STRUCT). No functions here: the kernel compiler sees it.
#pragma once
#include <cstdint>

namespace av4_tiling {

constexpr uint32_t kMaxCores = 64;     // 910B: up to 48 AIV; 910_93 (per die): 48

struct SparseAttnTiling {
  uint32_t B, S, H, D, N, W, K, ratio, cmpOffset, startPos, nCmp;
  float scale;
  uint32_t dAlign;       // D rounded to 16: whole 32-byte blocks as float32 and as bf16
  uint32_t headGroup;    // heads per pass (q + accumulator of a group live in UB); last group may be smaller
  uint32_t numHeadGroups;
  uint32_t entryBlock;   // KV rows gathered per online-softmax step (double-buffered)
  uint32_t entryAlign;   // entryBlock rounded to 8 (float scores row)
  uint32_t listAlign;    // W and K each rounded to 8 (int32 index lists: window at 0, compressed at W rounded)
  uint32_t usedCores;
  uint64_t ubUsed;       // bytes the kernel's InitBuffer calls reserve
  uint32_t rowSplit[kMaxCores + 1];
};

struct IndexerTiling {
  uint32_t B, S, H, d, N, topk, ratio, startPos;
  uint32_t dAlign, hAlign;
  uint32_t keyBlock;     // keys per streamed block (double-buffered)
  uint32_t candAlign;    // topk + keyBlock rounded to 32 elements (Sort works on 32-element groups)
  uint32_t outAlign;     // topk rounded to 8
  uint32_t usedCores;
  uint64_t ubUsed;
  uint32_t rowSplit[kMaxCores + 1];
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
