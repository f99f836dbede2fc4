// Host tiling of the attention family's AscendC kernels, in plain C++ (no CANN headers): the op_host
// TilingFunc of each op reads the platform (AIV core count, UB bytes) and calls these functions, and
// tests/ops/test_attention_ascendc.py compiles them with g++ and checks them over many shapes.
//
// Rules every tiling obeys: each UB buffer is a multiple of 32 bytes (GM<->UB moves 32-byte blocks; ragged
// rows go through DataCopyPad), the sum of buffers (times their queue depth) fits the UB budget, and the
// work is split into contiguous per-core ranges that cover every item exactly once, balanced by cost.
#pragma once
#include <cstdint>

#include "../op_kernel/attention_tiling_data.h"

namespace av4_tiling {

constexpr uint32_t kBlock = 32;        // UB block bytes
constexpr uint32_t kUbReserve = 1024;  // bytes left for the framework (tiling data copy, stack)

struct Platform {
  uint32_t aivCores;      // platform_ascendc::PlatformAscendC::GetCoreNumAiv()
  uint64_t ubBytes;       // GetCoreMemSize(CoreMemType::UB, ...)
  uint32_t aicCores = 0;  // GetCoreNumAic() (mixed AIC/AIV kernels: one group = 1 AIC + 2 AIV)
  uint64_t l1Bytes = 0;   // GetCoreMemSize(CoreMemType::L1, ...)
};

// Cube buffers of the 910B / 910_93 AI Cube core (fixed by the architecture): L0A / L0B 64 KiB, L0C 128 KiB.
constexpr uint64_t kL0ABytes = 64 * 1024, kL0BBytes = 64 * 1024, kL0CBytes = 128 * 1024;

inline uint64_t AlignUp(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
inline uint32_t AlignElems(uint32_t n, uint32_t elemBytes) {
  return static_cast<uint32_t>(AlignUp(static_cast<uint64_t>(n) * elemBytes, kBlock) / elemBytes);
}
inline uint64_t MinU(uint64_t a, uint64_t b) { return a < b ? a : b; }
inline uint64_t MaxU(uint64_t a, uint64_t b) { return a > b ? a : b; }

// Split items [0, n) into `parts` contiguous ranges with near-equal total cost: split[p] .. split[p+1].
// cost(i) must be > 0. Returns the number of non-empty ranges (= cores used).
template <typename CostFn>
inline uint32_t BalancedSplit(uint64_t n, uint32_t parts, CostFn cost, uint32_t* split) {
  if (parts == 0) parts = 1;
  if (n < parts) parts = static_cast<uint32_t>(n == 0 ? 1 : n);
  long double total = 0;
  for (uint64_t i = 0; i < n; ++i) total += cost(i);
  split[0] = 0;
  uint32_t p = 1;
  long double acc = 0;
  for (uint64_t i = 0; i < n && p < parts; ++i) {
    acc += cost(i);
    // close range p-1 after item i once it reaches its share, leaving at least one item per later range
    if (acc >= total * p / parts && n - (i + 1) >= parts - p) split[p++] = static_cast<uint32_t>(i + 1);
  }
  while (p < parts) {  // (only when costs are extremely skewed) give each remaining range one item
    split[p] = split[p - 1] + 1;
    ++p;
  }
  split[parts] = static_cast<uint32_t>(n);
  return parts;
}

// ----------------------------------------------------------------------------------- sparse attention
struct AttnShape {
  uint32_t B, S, H, D;   // query [B, S, H, D]
  uint32_t N;            // kv rows [B, N, D] (shared key = value)
  uint32_t W;            // window list width
  uint32_t K;            // compressed list width (0 in HCA mode / window only)
  uint32_t ratio;        // HCA: every visible entry (no list); 0 otherwise
  uint32_t cmpOffset;    // HCA: first compressed row in kv
  uint32_t startPos;     // position of query row 0
  uint32_t dtypeBytes;   // 2 (bf16/fp16) or 4 (fp32) for q / kv / out in GM
  float scale;
};

// UB bytes for a given (head group, entry block): must match SparseAttnKernel::Init exactly.
inline uint64_t AttnUbBytes(const AttnShape& s, uint32_t dAlign, uint32_t hg, uint32_t jb) {
  const uint64_t jbA = AlignElems(jb, 4), listA = AlignElems(s.W, 4) + AlignElems(s.K, 4);
  uint64_t b = 0;
  b += 2ull * hg * dAlign * 4;                 // q group (float) + accumulator
  if (s.dtypeBytes != 4) b += AlignUp(1ull * hg * dAlign * s.dtypeBytes, kBlock);   // q staging before Cast
  b += 2ull * AlignUp(1ull * jb * dAlign * s.dtypeBytes, kBlock);                  // kv rows, 2 buffers
  if (s.dtypeBytes != 4) b += 1ull * jb * dAlign * 4;                                // kv cast to float
  b += 1ull * hg * jbA * 4;                    // scores [hg, jb]
  b += 2ull * listA * 4;                       // raw index lists + compacted valid ids
  b += 3ull * AlignUp(hg * 4ull, kBlock);      // running max, running sum, sink
  b += 1ull * dAlign * 4;                      // product scratch for the dot products
  b += 2ull * kBlock;                          // reduce result + reduce work (ReduceSum/Max on <= 64 elems)
  b += 1ull * AlignUp(1ull * dAlign * 4, kBlock) + kBlock;   // reduce work of length dAlign, scalar vector
  if (s.dtypeBytes != 4) b += AlignUp(1ull * dAlign * s.dtypeBytes, kBlock);         // output staging (one head)
  return b;
}

inline uint64_t AttnRowCost(const AttnShape& s, uint64_t row) {
  const uint64_t t = row % s.S, pos = s.startPos + t;
  uint64_t c = MinU(s.W, pos + 1);
  if (s.ratio) {
    const uint64_t n = s.N > s.cmpOffset ? s.N - s.cmpOffset : 0;
    c += MinU((pos + 1) / s.ratio, n);
  } else {
    c += s.K;
  }
  return c + 4;   // + per-row fixed cost (q load, output store)
}

// ---- key 1 (16-bit q/kv): Q·Kᵀ and P·V on the Cube, softmax on the two vector cores of each group
constexpr uint32_t kAttnEntryTile = 128;   // gathered entries per Cube step (N of Q·Kᵀ, K of P·V)

// Vector-core UB bytes of SparseAttnVector::Init for nh heads per sub-block.
inline uint64_t AttnCubeUbBytes(const AttnShape& s, uint32_t nh, uint32_t dA, uint32_t listA) {
  const uint64_t e = kAttnEntryTile, h4 = AlignUp(nh * 4ull, kBlock);
  uint64_t b = 0;
  b += 2ull * nh * e * 4;                       // S rows, 2 buffers
  b += 2ull * nh * 128 * 4;                     // O column chunks, 2 buffers
  b += AlignUp(1ull * nh * e * s.dtypeBytes, kBlock);   // P staging (input dtype)
  b += 1ull * nh * dA * 4;                      // float accumulator
  b += 5 * h4;                                  // running max, sum, sink, exp(m_old - m_new) x 2
  b += e * 4 + kBlock + e * 4 + kBlock;         // mask row, reduce result, reduce work, scalar vector
  b += 1ull * listA * 4;                        // raw index lists (valid count)
  b += AlignUp(1ull * dA * s.dtypeBytes, kBlock);   // output staging (one head)
  return b;
}

// Cube-core L1 bytes of SparseAttnCube::Init: q of a head group, two gathered kv blocks, P.
inline uint64_t AttnCubeL1Bytes(const AttnShape& s, uint32_t mA, uint32_t dA) {
  return (1ull * mA * dA + 2ull * kAttnEntryTile * dA + 1ull * mA * kAttnEntryTile) * s.dtypeBytes;
}

inline bool TileSparseAttnCube(const AttnShape& s, const Platform& p, SparseAttnTiling* t, const char** why) {
  const uint32_t dA = t->dAlign, listA = t->listAlign;
  const uint64_t budget = p.ubBytes - kUbReserve;
  // the largest head group (<= 128 rows of M) whose vector half fits UB and whose Cube buffers fit L1 / L0
  uint32_t hg = s.H < 128 ? s.H : 128;
  for (;; hg = (hg + 1) / 2) {
    const uint32_t mA = static_cast<uint32_t>(AlignUp(hg, 16)), nh = (hg + 1) / 2;
    const bool fits = AttnCubeUbBytes(s, nh, dA, listA) <= budget && AttnCubeL1Bytes(s, mA, dA) <= p.l1Bytes &&
                      2ull * mA * kAttnEntryTile * 4 <= kL0CBytes;
    if (fits) break;
    if (hg == 1) { *why = "head dim too large for the Cube design's UB / L1 even with one head"; return false; }
  }
  t->tilingKey = ATTN_KEY_CUBE;
  t->headGroup = hg;
  t->numHeadGroups = (s.H + hg - 1) / hg;
  t->mAlign = static_cast<uint32_t>(AlignUp(hg, 16));
  t->headHalf = (hg + 1) / 2;
  t->dTiles = (dA + 127) / 128;
  t->entryBlock = kAttnEntryTile;
  t->entryAlign = kAttnEntryTile;
  t->ubUsed = AttnCubeUbBytes(s, t->headHalf, dA, listA);
  t->l1Used = AttnCubeL1Bytes(s, t->mAlign, dA);
  t->wsPerGroup = 2ull * t->mAlign * kAttnEntryTile * (4 + s.dtypeBytes) + 2ull * t->mAlign * dA * 4;
  const uint32_t groups = static_cast<uint32_t>(MinU(MinU(p.aicCores, p.aivCores / 2), kMaxCores));
  t->usedCores = BalancedSplit(1ull * s.B * s.S, groups, [&](uint64_t r) {
    return static_cast<long double>((AttnRowCost(s, r) + kAttnEntryTile - 1) / kAttnEntryTile + 1);
  }, t->rowSplit);
  return true;
}

// Returns false with *why set when no tiling fits. 16-bit q/kv on a platform with Cube cores: key 1 (the Cube);
// float32: key 0 (vector cores only).
inline bool TileSparseAttn(const AttnShape& s, const Platform& p, SparseAttnTiling* t, const char** why) {
  if (s.B == 0 || s.S == 0 || s.H == 0 || s.D == 0) { *why = "empty query"; return false; }
  if (s.dtypeBytes != 2 && s.dtypeBytes != 4) { *why = "dtype must be 2 or 4 bytes"; return false; }
  if (p.aivCores == 0 || p.ubBytes <= kUbReserve) { *why = "platform reports no AIV cores / UB"; return false; }
  *t = SparseAttnTiling{};
  t->B = s.B, t->S = s.S, t->H = s.H, t->D = s.D, t->N = s.N, t->W = s.W, t->K = s.K, t->ratio = s.ratio;
  t->cmpOffset = s.cmpOffset, t->startPos = s.startPos, t->scale = s.scale;
  t->nCmp = s.ratio && s.N > s.cmpOffset ? s.N - s.cmpOffset : 0;
  t->dAlign = static_cast<uint32_t>(AlignUp(s.D, 16));   // whole 32-byte blocks as float and as bf16
  const uint64_t budget = p.ubBytes - kUbReserve;
  // Prefer the largest head group (each group re-reads the KV rows), then the largest entry block.
  bool found = false;
  for (uint32_t hg = s.H; !found; hg = (hg + 1) / 2) {
    for (uint32_t jb = 64; jb >= 8 && !found; jb /= 2)
      if (AttnUbBytes(s, t->dAlign, hg, jb) <= budget) t->headGroup = hg, t->entryBlock = jb, found = true;
    if (hg == 1) break;
  }
  if (!found) { *why = "head dim too large for UB even with one head and 8 rows"; return false; }
  t->numHeadGroups = (s.H + t->headGroup - 1) / t->headGroup;
  t->entryAlign = AlignElems(t->entryBlock, 4);
  t->listAlign = AlignElems(s.W, 4) + AlignElems(s.K, 4);
  if (s.dtypeBytes == 2 && p.aicCores > 0 && p.aivCores >= 2 && p.l1Bytes > 0) return TileSparseAttnCube(s, p, t, why);
  t->ubUsed = AttnUbBytes(s, t->dAlign, t->headGroup, t->entryBlock);
  const uint64_t rows = 1ull * s.B * s.S;
  t->usedCores = BalancedSplit(rows, static_cast<uint32_t>(MinU(p.aivCores, kMaxCores)),
                               [&](uint64_t r) { return static_cast<long double>(AttnRowCost(s, r)); }, t->rowSplit);
  return true;
}

// ---------------------------------------------------------------------------------- lightning indexer
struct IndexerShape {
  uint32_t B, S, H, d;   // q [B, S, H, d]
  uint32_t N;            // keys [B, N, d]
  uint32_t topk;         // output width = min(topk, N)
  uint32_t ratio, startPos;
  uint32_t dtypeBytes;
};

// Vector-core UB bytes of IndexerVector::Init (per AIV; both sub-blocks allocate the same).
inline uint64_t IndexerUbBytes(const IndexerShape& s, uint32_t hA, uint32_t kb, uint32_t tA) {
  uint64_t b = 0;
  b += 2ull * s.H * kb * 4;                                          // score tile [H, keyBlock] from the workspace, 2 buffers
  b += 1ull * hA * 4;                                                // head weights (float)
  if (s.dtypeBytes != 4) b += AlignUp(1ull * hA * s.dtypeBytes, kBlock);   // weights staging before Cast
  b += 3ull * kb * 4;                                                // block scores, iota, block ids
  b += 2ull * kb * 8;                                                // block (score, id) pairs + Sort scratch
  b += 2ull * (tA + kb) * 8;                                         // running list, ping-pong merge output
  b += 1ull * tA * 8;                                                // the empty list (copied in per row)
  b += 2ull * tA * 4 + 2ull * tA * 8;                                // final ids, keys, sorted pairs, Sort scratch
  return b;
}

// Cube-core L1 bytes of IndexerCube::Init: q of a pair + two key blocks (ping-pong).
inline uint64_t IndexerL1Bytes(const IndexerShape& s, uint32_t mA, uint32_t dA, uint32_t kb) {
  return 1ull * mA * dA * s.dtypeBytes + 2ull * kb * dA * s.dtypeBytes;
}

inline uint32_t IndexerVisible(const IndexerShape& s, uint64_t t) {
  return static_cast<uint32_t>(MinU((s.startPos + t + 1) / s.ratio, s.N));
}

inline bool TileIndexer(const IndexerShape& s, const Platform& p, IndexerTiling* t, const char** why) {
  if (s.B == 0 || s.S == 0 || s.H == 0 || s.d == 0 || s.ratio == 0) { *why = "empty input or ratio 0"; return false; }
  if (s.dtypeBytes != 2 && s.dtypeBytes != 4) { *why = "dtype must be 2 or 4 bytes"; return false; }
  if (s.d % 16) { *why = "indexer head dim must be a multiple of 16 (whole Cube fractals, no K padding)"; return false; }
  if (2 * s.H > 128) { *why = "indexer heads must be <= 64 (both rows' heads form one 128-row Cube tile)"; return false; }
  if (p.aivCores < 2 || p.aicCores == 0 || p.ubBytes <= kUbReserve || p.l1Bytes == 0) {
    *why = "platform reports no AIC / AIV cores, UB or L1"; return false;
  }
  *t = IndexerTiling{};
  t->B = s.B, t->S = s.S, t->H = s.H, t->d = s.d, t->N = s.N, t->ratio = s.ratio, t->startPos = s.startPos;
  t->topk = static_cast<uint32_t>(MinU(s.topk, s.N));
  t->dAlign = s.d;
  t->hAlign = AlignElems(s.H, 4);
  t->mAlign = static_cast<uint32_t>(AlignUp(2ull * s.H, 16));
  t->keyBlock = 128;                                       // one 128-wide base tile of keys per step
  t->kTile = s.dtypeBytes == 2 ? 128 : 64;                 // 128 x kTile x dtype = 32 KiB: two per L0A / L0B
  t->topkAlign = static_cast<uint32_t>(AlignUp(t->topk ? t->topk : 1, 32));
  if (2ull * t->mAlign * t->kTile * s.dtypeBytes > kL0ABytes || 2ull * t->keyBlock * t->kTile * s.dtypeBytes > kL0BBytes ||
      2ull * t->mAlign * t->keyBlock * 4 > kL0CBytes) { *why = "Cube tiles exceed L0"; return false; }
  t->l1Used = IndexerL1Bytes(s, t->mAlign, t->dAlign, t->keyBlock);
  if (t->l1Used > p.l1Bytes) { *why = "indexer head dim too large for L1"; return false; }
  t->ubUsed = IndexerUbBytes(s, t->hAlign, t->keyBlock, t->topkAlign);
  if (t->ubUsed > p.ubBytes - kUbReserve) { *why = "topk / head count too large for UB"; return false; }
  if (t->topk + t->keyBlock > 4095) { *why = "topk must be <= 3967 (MrgSort list lengths)"; return false; }
  t->wsPerGroup = 2ull * t->mAlign * t->keyBlock * 4;
  const uint32_t half = (s.S + 1) / 2;
  t->pairs = s.B * half;
  const uint32_t groups = static_cast<uint32_t>(MinU(MinU(p.aicCores, p.aivCores / 2), kMaxCores));
  // cost of a pair: key blocks of its later row (the Cube and both vector cores step through them) + fixed
  t->usedGroups = BalancedSplit(t->pairs, groups, [&](uint64_t q) {
    const uint64_t t1 = MinU(2 * (q % half) + 1, s.S - 1);
    return static_cast<long double>((IndexerVisible(s, t1) + 127) / 128 + 1);
  }, t->pairSplit);
  return true;
}

// --------------------------------------------------------------------------------- compressor pooling
struct CompressShape {
  uint32_t B, S;      // kvp / scp [B, S, coff*c] (projections; ape added in the kernel)
  uint32_t c, ratio;
  uint32_t overlap;   // 1: coff = 2, 2*ratio slots per entry
  uint32_t dtypeBytes;
  float eps;
};

inline uint64_t CompressUbBytes(const CompressShape& s, uint32_t slots, uint32_t cg, uint32_t cA) {
  const uint64_t tile = 1ull * slots * cg;
  uint64_t b = 0;
  b += 2ull * 2 * AlignUp(tile * s.dtypeBytes, kBlock);   // kv and score slot tiles, 2 buffers each
  if (s.dtypeBytes != 4) b += 2ull * tile * 4;           // float copies after Cast
  b += tile * 4;                                          // ape tile (float)
  b += 3ull * cg * 4;                                     // running max, denominator, pooled y of this group
  b += 1ull * cg * 4;                                     // exp scratch
  b += 2ull * cA * 4;                                     // full pooled row y[c] + norm weight
  b += AlignUp(1ull * cA * 4, kBlock) + 2ull * kBlock;    // reduce work + result
  if (s.dtypeBytes != 4) b += AlignUp(1ull * cA * s.dtypeBytes, kBlock);   // output staging
  return b;
}

inline bool TileCompress(const CompressShape& s, const Platform& p, CompressTiling* t, const char** why) {
  if (s.B == 0 || s.c == 0 || s.ratio == 0) { *why = "empty input or ratio 0"; return false; }
  if (s.dtypeBytes != 2 && s.dtypeBytes != 4) { *why = "dtype must be 2 or 4 bytes"; return false; }
  if (p.aivCores == 0 || p.ubBytes <= kUbReserve) { *why = "platform reports no AIV cores / UB"; return false; }
  *t = CompressTiling{};
  t->B = s.B, t->S = s.S, t->c = s.c, t->ratio = s.ratio, t->overlap = s.overlap ? 1 : 0, t->eps = s.eps;
  t->width = (s.overlap ? 2 : 1) * s.c;
  t->nBlocks = s.S / s.ratio;
  t->slots = (s.overlap ? 2 : 1) * s.ratio;
  t->cAlign = static_cast<uint32_t>(AlignUp(s.c, 16));
  const uint64_t budget = p.ubBytes - kUbReserve;
  // channel groups are multiples of 16 channels, so each slot row of a tile is whole 32-byte blocks in bf16 and fp32
  uint32_t cg = static_cast<uint32_t>(AlignUp(s.c, 16));
  while (cg >= 16 && CompressUbBytes(s, t->slots, cg, t->cAlign) > budget) cg = (cg / 2) / 16 * 16;
  if (cg < 16) { *why = "ratio too large for UB even with 16 channels per pass"; return false; }
  t->chanGroup = cg;
  t->numChanGroups = (s.c + cg - 1) / cg;
  t->ubUsed = CompressUbBytes(s, t->slots, cg, t->cAlign);
  const uint64_t items = 1ull * s.B * t->nBlocks;
  t->usedCores = items ? BalancedSplit(items, static_cast<uint32_t>(MinU(p.aivCores, kMaxCores)),
                                       [](uint64_t) { return 1.0L; }, t->itemSplit)
                       : 0;
  if (!items) t->itemSplit[0] = t->itemSplit[1] = 0;
  return true;
}

}  // namespace av4_tiling
