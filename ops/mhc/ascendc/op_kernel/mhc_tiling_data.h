// Tiling data of the mHC AscendC kernels: plain structs shared by the host tiling (tiling/hc_tiling.cc, compiled
// with any C++17 compiler) and the kernels (GET_TILING_DATA_WITH_STRUCT). Buffer sizes are the exact byte counts
// the kernels pass to TPipe::InitBuffer, so the host can prove the UB budget before launch.
#pragma once
#include <cstdint>

#if defined(__CCE_AICORE__) || defined(AV4_ASCENDC_STANDIN)
#define MHC_TILING_FN __aicore__ inline
#else
#define MHC_TILING_FN inline
#endif

namespace mhc_av4 {

constexpr int32_t kUbAlign = 32;        // UB addresses and DataCopy blocks are 32 bytes
constexpr int32_t kReduceLanes = 64;    // floats per WholeReduceSum repeat (256 bytes)
constexpr int32_t kMaxTileT = 8;        // tokens sharing one fn chunk (one 32-byte lane row in the Sinkhorn layout)
constexpr int32_t kMaxHc = 8;
constexpr int32_t kMaxM = (2 + kMaxHc) * kMaxHc;

struct HcPreTilingData {  // hc_pre (head == 0) and hc_head (head == 1)
  int64_t T;
  int64_t D;
  int64_t K;               // hc * D, one token's flattened streams
  int32_t hc;
  int32_t M;               // mix rows: (2 + hc) * hc, or hc for the head
  int32_t head;
  int32_t xBytes;          // 2 (bf16) or 4 (float32) for x and y
  int32_t usedCores;       // balanced split: cores [0, frontCores) take baseTokens + 1 tokens, the rest baseTokens
  int32_t frontCores;
  int64_t baseTokens;
  int32_t tileT;           // tokens per tile: they share each fn chunk
  int32_t lanes;           // tileT rounded up to 8 floats: one 32-byte row per coefficient (Sinkhorn layout)
  int32_t kChunk;          // K elements per chunk (multiple of 64)
  int32_t kChunks;
  int32_t kTail;           // elements of the last chunk (multiple of 64)
  int32_t rp;              // partial sums per row and chunk, kChunk / 64 padded to 8 (a 32-byte row)
  int32_t dChunk;          // D elements per chunk of the collapse y = sum_i pre_i x_i (multiple of 64)
  int32_t dChunks;
  int32_t dTail;           // elements of the last D chunk (multiple of 16)
  // InitBuffer sizes in bytes; *In/*Out queues are double-buffered (2 x), TBufs single.
  uint32_t xInBytes;       // VECIN  tileT rows x kChunk of x
  uint32_t fnInBytes;      // VECIN  M rows x kChunk of fn (float32)
  uint32_t xCastBytes;     // TBuf   tileT x kChunk float32 (bf16 input only, else 0)
  uint32_t prodBytes;      // TBuf   (M + 1) x kChunk products (row M: x^2 for the rms)
  uint32_t partBytes;      // TBuf   (M + 1) x rp partial sums of one token and chunk
  uint32_t accBytes;       // TBuf   tileT x (M + 1) x rp running partial sums
  uint32_t coefBytes;      // TBuf   coefficient rows (2 (M + 1) + 4) x lanes + token sums tileT x (M + 1)
  uint32_t stageBytes;     // VECOUT (single) token-major mix, rstd, post, comb of one tile
  uint32_t yInBytes;       // VECIN  hc rows x dChunk of x
  uint32_t yCastBytes;     // TBuf   (hc + 1) x dChunk float32 (bf16 input only, else dChunk for the sum)
  uint32_t yOutBytes;      // VECOUT dChunk of y
  uint32_t ubBytes;        // total of the above as allocated
};

struct HcPostTilingData {
  int64_t T;
  int64_t D;
  int32_t hc;
  int32_t xBytes;          // f, residual and out
  int32_t usedCores;
  int32_t frontCores;
  int64_t baseTokens;
  int32_t dChunk;
  int32_t dChunks;
  int32_t dTail;
  uint32_t fInBytes;       // VECIN  dChunk of f
  uint32_t resInBytes;     // VECIN  hc rows x dChunk of residual
  uint32_t castBytes;      // TBuf   (1 + hc + 1) x dChunk float32 (f, residual rows, one output row)
  uint32_t outBytes;       // VECOUT hc rows x dChunk of out
  uint32_t ubBytes;
};

MHC_TILING_FN int64_t HcAlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// Tokens [start, start + count) of core `block`: the one rule host tests and kernels share.
MHC_TILING_FN void HcTokenRange(int64_t block, int32_t frontCores, int64_t baseTokens, int64_t* start,
                                int64_t* count) {
  if (block < frontCores) {
    *count = baseTokens + 1;
    *start = block * (baseTokens + 1);
  } else {
    *count = baseTokens;
    *start = frontCores * (baseTokens + 1) + (block - frontCores) * baseTokens;
  }
}

}  // namespace mhc_av4
