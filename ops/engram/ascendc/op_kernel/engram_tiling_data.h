// Tiling data of the Engram AscendC kernels (EngramGateAv4, EngramDequantAv4): plain structs shared by the host
// tiling (tiling/engram_tiling.cc, any C++17 compiler) and the kernels (GET_TILING_DATA_WITH_STRUCT). Buffer sizes
// are the exact byte counts the kernels pass to TPipe::InitBuffer, so the host proves the UB budget before launch.
#pragma once
#include <cstdint>

#if defined(__CCE_AICORE__) || defined(AV4_ASCENDC_STANDIN)
#define ENGRAM_TILING_FN __aicore__ inline
#else
#define ENGRAM_TILING_FN inline
#endif

namespace engram_av4 {

constexpr int32_t kUbAlign = 32;       // UB addresses and DataCopy blocks are 32 bytes
constexpr int32_t kMaxHc = 8;          // mHC streams (V4.1: 4)
constexpr int32_t kMaxTileT = 16;      // tokens sharing one chunk of the gate weight in the statistics pass
constexpr int32_t kRedSlot = 8;        // floats per ReduceSum result slot (one 32-byte block)
constexpr int32_t kBrcbGroups = 8;     // scales per Brcb repeat (one 32-byte block of float32 each)
constexpr int32_t kMulRepeats = 248;   // groups per level-0 Mul call (repeat count <= 255, a multiple of 8)

// The gated read of one Engram layer into the hc mHC streams (ops/engram/reference.py engram_gate):
//   h [T, hc, D], kv [T, (hc + 1) D] (hc keys, then the value) in DTYPE_H; weight [hc, D] = q_weight * k_weight,
//   alive [T] float32 -> out [T, hc, D] in DTYPE_H.
// Per core a token range; per tile of <= kMaxTileT tokens two passes over D chunks: (1) the weight chunk once, then
// each token's h and key chunks -> per stream sum h^2, sum key^2, sum h w key (float32); the gates from those;
// (2) each token's h and value chunks -> out_s = h_s + g_s value.
struct EngramGateTilingData {
  int64_t T;
  int64_t D;
  int32_t hc;
  int32_t xBytes;          // 2 (bf16) or 4 (float32): h, kv and out
  int32_t usedCores;       // AIV cores with tokens: [0, frontCores) take baseTokens + 1, the rest baseTokens
  int32_t frontCores;
  int64_t baseTokens;
  int32_t tileT;           // tokens per statistics tile (<= kMaxTileT)
  int32_t dChunk;          // D elements per chunk (multiple of 16; of 64 unless D itself is shorter)
  int32_t dChunks;
  int32_t dTail;           // elements of the last chunk (multiple of 16)
  float eps;               // added to both mean squares (V4.1: 1e-20)
  float invD;              // 1 / D
  float invSqrtD;          // 1 / sqrt(D)
  float clamp;             // |dot| floor before the square root (1e-6)
  // InitBuffer sizes in bytes; queues are double-buffered (2 x), TBufs single.
  uint32_t hInBytes;       // VECIN  hc rows x dChunk of h
  uint32_t kInBytes;       // VECIN  hc rows x dChunk of the keys (pass 1)
  uint32_t vInBytes;       // VECIN  dChunk of the value (pass 2)
  uint32_t outBytes;       // VECOUT hc rows x dChunk of out
  uint32_t wBytes;         // TBuf   hc rows x dChunk of the weight (float32)
  uint32_t castBytes;      // TBuf   bf16 only: 2 hc rows x dChunk float32 (h, then the keys or the value); 0 for float32
  uint32_t tmpBytes;       // TBuf   3 rows x dChunk float32: h^2, key^2, h w key (pass 2: the output row)
  uint32_t workBytes;      // TBuf   ReduceSum's shared temporary: dChunk float32
  uint32_t redBytes;       // TBuf   3 hc result slots of kRedSlot floats
  uint32_t tinyBytes;      // TBuf   2 kMaxHc floats: the gates' square roots and exponentials
  uint32_t ubBytes;        // total of the above as allocated
  uint32_t pad0;
};

// INT8 rows x per-group scales -> float32 / bf16 rows (ops/engram/reference.py engram_dequant):
//   rows int8 [N, L], scales float32 [N, L / g] -> out [N, L] in DTYPE_Y (attribute dst_type: 0 float32, 1 bf16).
// Rows are contiguous and L is a multiple of g, so the data is one flat run of G = N L / g groups of g values;
// each core takes a range of whole 8-group blocks, chunk by chunk: int8 -> half -> float32 (Cast), the chunk's
// scales broadcast to one 32-byte block each (Brcb), one level-0 Mul per <= kMulRepeats groups reading each
// group's block g / 8 times (src1 block stride 0), cast to bf16 when asked.
struct EngramDequantTilingData {
  int64_t N;
  int64_t L;
  int64_t groups;          // N L / g
  int32_t g;               // values per scale: a multiple of 8, at most 64 (one repeat of float32)
  int32_t yBytes;          // 4 (float32 out) or 2 (bf16 out)
  int32_t usedCores;       // cores with groups: [0, frontCores) take baseBlocks + 1 blocks of 8 groups, the rest baseBlocks
  int32_t frontCores;
  int64_t baseBlocks;
  int32_t chunkGroups;     // groups per chunk (multiple of 8)
  int32_t pad0;
  uint32_t rowInBytes;     // VECIN  chunkGroups g int8
  uint32_t scaleInBytes;   // VECIN  chunkGroups float32
  uint32_t halfBytes;      // TBuf   chunkGroups g half
  uint32_t floatBytes;     // TBuf   chunkGroups g float32 (the product; cast source for bf16)
  uint32_t brcbBytes;      // TBuf   chunkGroups blocks of 8 float32
  uint32_t outBytes;       // VECOUT chunkGroups g DTYPE_Y
  uint32_t ubBytes;
  uint32_t pad1;
};

ENGRAM_TILING_FN int64_t EngramAlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// Items [start, start + count) of core `block` (tokens of the gate, 8-group blocks of the dequant): the one rule
// host tests and kernels share.
ENGRAM_TILING_FN void EngramRange(int64_t block, int32_t frontCores, int64_t base, int64_t* start, int64_t* count) {
  if (block < frontCores) {
    *count = base + 1;
    *start = block * (base + 1);
  } else {
    *count = base;
    *start = frontCores * (base + 1) + (block - frontCores) * base;
  }
}

}  // namespace engram_av4
