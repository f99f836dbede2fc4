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
  int32_t usedCores;       // AIV cores with tokens: [0, frontCores) take baseTokens + 1, the rest baseTokens
  int32_t frontCores;
  int64_t baseTokens;
  int32_t tileT;           // tokens per vector tile
  int32_t lanes;           // tileT rounded up to 8 floats: one 32-byte row per coefficient (Sinkhorn layout)
  int32_t dChunk;          // D elements per chunk of the collapse y = sum_i pre_i x_i (multiple of 64)
  int32_t dChunks;
  int32_t dTail;           // elements of the last D chunk (multiple of 16)
  // Cube projection (AIC cores): raw[t, n] = sum_k x[t, k] B[n, k] with B = fn (float32 x) or [fn_hi; fn_lo]
  // (bf16 x: fn = hi + lo in bf16, split by the AIV cores into the workspace first, so bf16 x bf16 products are
  // exact in the float32 accumulation), and the sums of squares as the diagonal of x x^T from the same L1 tile.
  // Token tiles of baseM x K parts of kPart, dealt round-robin to the AIC cores; each (tile, part) writes its
  // partial sums to the workspace, the AIV cores add the parts. x is read once by the Cube, once by the collapse.
  int32_t groups;          // core groups launched (block dim): one AIC + two AIV each
  int32_t nCols;           // rows of B: M (float32 x) or 2 M (bf16 x)
  int32_t n16;             // nCols rounded up to 16: L0B / L0C width and the workspace row pitch (floats)
  int32_t baseM;           // tokens per cube tile (multiple of 16, <= 128)
  int32_t baseK;           // K per Mmad step (256 bytes of an x row, or less when L0B would not fit)
  int32_t kSplit;          // K parts (decode: one token tile shared by several cube cores)
  int64_t kPart;           // K per part (multiple of baseK)
  int64_t tiles;           // token tiles: ceil(T / baseM)
  int64_t wsFnOffset;      // workspace bytes: [2 M, K] bf16 split of fn, or [T, K] float32 x (xCast; bf16 x only)
  int64_t wsRawOffset;     // workspace bytes: [kSplit, T, n16] float32 partial projections
  int64_t wsSqOffset;      // workspace bytes: [kSplit, tiles, baseM, baseM] float32 partial x x^T blocks
  int64_t wsBytes;
  int32_t splitChunk;      // floats of fn per AIV split step (bf16 x)
  int32_t xCast;           // bf16 x, few tokens: the AIV cores cast x to float32 into the workspace (at
                           // wsFnOffset) and the Cube projects it onto fn directly (nCols = M), no fn split
  // InitBuffer sizes in bytes; *In/*Out queues are double-buffered (2 x), TBufs single.
  uint32_t rawInBytes;     // VECIN  tileT x n16 partial projections of one K part
  uint32_t sqInBytes;      // VECIN  tileT x 8 floats: one partial sum of squares per token (32-byte rows)
  uint32_t coefBytes;      // TBuf   coefficient rows (2 (M + 1) + 4) x lanes + tileT x n16 projections + sums
  uint32_t stageBytes;     // VECOUT (single) token-major mix, rstd, post, comb of one tile
  uint32_t yInBytes;       // VECIN  hc rows x dChunk of x
  uint32_t yCastBytes;     // TBuf   (hc + 1) x dChunk float32 (bf16 input only, else dChunk for the sum)
  uint32_t yOutBytes;      // VECOUT dChunk of y
  uint32_t splitBytes;     // VECIN + VECOUT + TBuf of the fn split (bf16 x): splitChunk floats in, 2 x bf16 out
                           // (hi, lo), splitChunk floats of scratch; 0 for float32 x
  uint32_t ubBytes;        // total of the above as allocated
  uint32_t pad1;
};

// AIC tiling limits of the Cube projection (910B / 910C AI Cube core)
constexpr int64_t kL0ABytes = 65536;
constexpr int64_t kL0BBytes = 65536;
constexpr int64_t kL0CBytes = 131072;
constexpr int64_t kL1Bytes = 524288;

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
