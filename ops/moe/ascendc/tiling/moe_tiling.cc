// Host tiling of the MoE AscendC kernels (see moe_tiling.h). The UB formulas here mirror the InitBuffer calls of
// the kernels in ../op_kernel one-for-one; keep them in sync (the kernels assert nothing at run time).
#include "moe_tiling.h"

#include <algorithm>

namespace moe_av4 {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t RoundUp(int64_t a, int64_t b) { return CeilDiv(a, b) * b; }
int64_t AlignElems(int64_t n, int64_t elemBytes) { return RoundUp(n * elemBytes, kBlockBytes) / elemBytes; }

bool Fail(const char** why, const char* msg) {
  if (why) *why = msg;
  return false;
}

// A row of H elements moved in tiles of `tile` (the last one the tail): init and finalize routing.
template <class TD>
void TileHidden(int64_t H, int64_t tile, TD* td) {
  td->hTile = tile;
  td->hTiles = CeilDiv(H, tile);
  td->hTail = H - (td->hTiles - 1) * tile;
}

// Records the UB bytes the kernel will allocate; false (with `msg`) when they exceed the platform's UB.
template <class TD>
bool CommitUb(uint64_t bytes, const MoePlatform& p, TD* td, const char** why, const char* msg) {
  td->ubBytes = uint32_t(bytes);
  return bytes <= p.ubBytes || Fail(why, msg);
}

}  // namespace

MoeRowSplit SplitRows(int64_t total, int64_t cores, int64_t minRows) {
  MoeRowSplit s{};
  s.total = total;
  if (total <= 0 || cores <= 0) {
    s.usedCores = 1;  // one core still runs (writes count outputs / zero fills)
    return s;
  }
  s.usedCores = std::max<int64_t>(1, std::min<int64_t>(cores, CeilDiv(total, std::max<int64_t>(1, minRows))));
  s.rowsSmall = total / s.usedCores;
  s.bigCores = total % s.usedCores;
  return s;
}

void SplitRange(const MoeRowSplit& s, int64_t core, int64_t* begin, int64_t* count) {
  *count = s.rowsSmall + (core < s.bigCores ? 1 : 0);
  *begin = core * s.rowsSmall + std::min(core, s.bigCores);
}

int64_t SplitOwner(const MoeRowSplit& s, int64_t row) {
  const int64_t bigRows = s.bigCores * (s.rowsSmall + 1);
  if (row < bigRows) return row / (s.rowsSmall + 1);
  return s.bigCores + (row - bigRows) / std::max<int64_t>(1, s.rowsSmall);
}

// ------------------------------------------------------------------------------------------ gating top-k
uint64_t GatingUbBytes(const MoeGatingTopKTilingData& td) {
  const int64_t ea = td.expertsAlign, rpl = td.rowsPerLoop;
  const int64_t ka = AlignElems(td.k, 4);
  uint64_t b = 0;
  b += 2ULL * rpl * ea * 4;      // inQueue: logits (float32)
  b += 2ULL * rpl * ea * 4;      // scoreQueue (VECOUT): score rows
  b += 2ULL * rpl * ka * 4;      // yQueue
  b += 2ULL * rpl * ka * 4;      // idxQueue
  const int64_t e32 = (td.experts + 31) / 32 * 32, k32 = (td.k + 31) / 32 * 32;
  b += 3ULL * ea * 4;            // calc: tmp, work, bias
  b += 2ULL * e32 * 4;           // sort keys (sel) + expert ids 0 .. E32-1 (Sort works on 32-element groups)
  b += 2ULL * e32 * 8;           // sorted (key, id) pairs + the Sort's merge scratch
  b += 1ULL * k32 * 4;           // ids gathered from the first k pairs (GatherMask)
  return b;
}

bool GatingTopKTiling(int64_t T, int64_t E, int64_t k, int32_t normType, int32_t groupCount, int32_t kGroup,
                      int32_t groupSelectMode, bool hasBias, bool hashed, int64_t tableCols, float scale, float eps,
                      int32_t inBytes, const MoePlatform& p, MoeGatingTopKTilingData* td, const char** why) {
  if (T < 0 || E <= 0) return Fail(why, "logits must be [T, E] with E > 0");
  if (k <= 0 || k > E || k > kMaxTopK) return Fail(why, "need 1 <= k <= min(E, 64)");
  if (normType < 0 || normType > 2) return Fail(why, "norm_type must be 0 (softmax), 1 (sigmoid) or 2 (sqrtsoftplus)");
  if (inBytes != 4) return Fail(why, "router logits must be float32 (router math is float32 on every backend)");
  if (hashed && tableCols != k) return Fail(why, "tid2eid must have k columns");
  const int32_t G = std::max<int32_t>(groupCount, 1);
  if (G > 64) return Fail(why, "group_count must be <= 64");
  if (E % G) return Fail(why, "expert count must be divisible by group_count");
  if (G > 1 && ((E / G) % 8)) return Fail(why, "experts per group must be a multiple of 8 (32-byte aligned groups)");
  if (G > 1 && (kGroup < 1 || kGroup > G || int64_t(kGroup) * (E / G) < k))
    return Fail(why, "k_group groups must hold at least k experts");
  if (groupSelectMode != 0 && groupSelectMode != 1) return Fail(why, "group_select_mode must be 0 or 1");
  *td = MoeGatingTopKTilingData{};
  td->experts = E;
  td->expertsAlign = AlignElems(E, 4);  // 32-byte aligned float32 rows
  td->k = k;
  td->tableCols = hashed ? tableCols : 0;
  td->normType = normType;
  td->groupCount = G;
  td->kGroup = G > 1 ? kGroup : 1;
  td->groupSelectMode = groupSelectMode;
  td->hasBias = hasBias && !hashed;
  td->hashed = hashed;
  td->routedScalingFactor = scale;
  td->eps = eps;
  td->split = SplitRows(T, p.aivCores, 8);
  const int64_t perCore = td->split.rowsSmall + (td->split.bigCores > 0 ? 1 : 0);
  td->rowsPerLoop = std::max<int64_t>(1, std::min<int64_t>(64, perCore));
  while (td->rowsPerLoop > 1 && GatingUbBytes(*td) > p.ubBytes) td->rowsPerLoop /= 2;
  return CommitUb(GatingUbBytes(*td), p, td, why, "expert count too large for the unified buffer");
}

// ------------------------------------------------------------------------------------------ init routing
uint64_t InitRoutingUbBytes(const MoeInitRoutingTilingData& td) {
  uint64_t b = 0;
  b += uint64_t(td.idsPerLoop) * 4;           // idsBuf: expert ids in, destinations out (int32)
  b += 3ULL * td.histStride * 4;              // hist (own / running prefix), total, staging row
  b += 2ULL * td.hTile * td.elemBytes;        // copyQueue (double-buffered GM -> UB -> GM row tiles)
  b += uint64_t(td.hTile) * td.elemBytes;     // zero tile for padding rows
  return b;
}

bool InitRoutingTiling(int64_t T, int64_t k, int64_t H, int64_t E, int64_t capacity, int64_t activeNum,
                       int32_t dropPad, int32_t countFlag, int32_t elemBytes, const MoePlatform& p,
                       MoeInitRoutingTilingData* td, const char** why) {
  if (T < 0 || k <= 0 || H <= 0) return Fail(why, "x must be [T, H] and expert_idx [T, k]");
  if (E <= 0) return Fail(why, "expert_num must be positive");
  if (dropPad != 0 && dropPad != 1) return Fail(why, "drop_pad_mode must be 0 or 1");
  if (dropPad == 1 && (capacity <= 0 || capacity > std::max<int64_t>(T, 1)))
    return Fail(why, "drop/pad needs 0 < expert_capacity <= tokens");
  if (activeNum < 0) return Fail(why, "active_num must be >= 0");
  if (elemBytes != 2 && elemBytes != 4) return Fail(why, "x must be float32, float16 or bfloat16");
  *td = MoeInitRoutingTilingData{};
  const int64_t N = T * k;
  td->tokens = T;
  td->k = k;
  td->hidden = H;
  td->experts = E;
  td->capacity = dropPad ? capacity : 0;
  td->outRows = dropPad ? E * capacity : (activeNum > 0 ? std::min(activeNum, N) : N);
  td->dropPad = dropPad;
  td->countFlag = countFlag;
  td->elemBytes = elemBytes;
  td->histStride = AlignElems(E + 1, 4);
  td->split = SplitRows(N, p.aivCores, 64);
  td->idsPerLoop = std::min<int64_t>(2048, AlignElems(std::max<int64_t>(1, td->split.rowsSmall + 1), 4));
  td->workspaceBytes = uint64_t(td->split.usedCores) * td->histStride * 4;
  // Largest row tile (32-byte aligned) that fits next to the fixed buffers; whole rows when they fit.
  const uint64_t fixed = uint64_t(td->idsPerLoop) * 4 + 3ULL * td->histStride * 4;
  if (fixed + 3ULL * kBlockBytes > p.ubBytes) return Fail(why, "expert count too large for the unified buffer");
  const int64_t maxTile = int64_t((p.ubBytes - fixed) / (3ULL * elemBytes)) / (kBlockBytes / elemBytes) *
                          (kBlockBytes / elemBytes);
  TileHidden(H, std::min<int64_t>(AlignElems(H, elemBytes), maxTile), td);
  return CommitUb(InitRoutingUbBytes(*td), p, td, why, "unified buffer overflow");
}

// ------------------------------------------------------------------------------------------ finalize routing
uint64_t FinalizeUbBytes(const MoeFinalizeRoutingTilingData& td) {
  const uint64_t t = uint64_t(td.hTile);
  uint64_t b = 0;
  b += 2 * t * td.elemBytes;                                    // inQueue: expanded rows
  if (td.hasBias) b += 2 * t * td.elemBytes;                    // biasQueue
  if (td.hasX1 || td.hasX2) b += 2 * t * td.elemBytes;          // skipQueue: x1 / x2 rows
  b += 2 * t * td.elemBytes;                                    // outQueue
  b += t * 4;                                                   // acc (float32)
  if (td.elemBytes == 2) b += t * 4;                            // cast buffer
  return b;
}

bool FinalizeRoutingTiling(int64_t T, int64_t k, int64_t H, int64_t expandedRows, int32_t dropPadMode, bool hasX1,
                           bool hasX2, bool hasBias, int32_t elemBytes, const MoePlatform& p,
                           MoeFinalizeRoutingTilingData* td, const char** why) {
  if (T < 0 || k <= 0 || H <= 0 || expandedRows < 0) return Fail(why, "bad shapes");
  if (dropPadMode < 0 || dropPadMode > 3) return Fail(why, "drop_pad_mode must be in [0, 3]");
  if (hasX2 && !hasX1) return Fail(why, "x1 must be given before x2");
  if (elemBytes != 2 && elemBytes != 4) return Fail(why, "expanded_x must be float32, float16 or bfloat16");
  *td = MoeFinalizeRoutingTilingData{};
  td->tokens = T;
  td->k = k;
  td->hidden = H;
  td->expandedRows = expandedRows;
  td->dropPadMode = dropPadMode;
  td->hasX1 = hasX1;
  td->hasX2 = hasX2;
  td->hasBias = hasBias;
  td->elemBytes = elemBytes;
  td->split = SplitRows(T, p.aivCores, 1);
  // per element of a tile: queues (2 buffers each) of elemBytes + float32 acc (+ cast)
  const uint64_t perElem = (2ULL + (hasBias ? 2 : 0) + ((hasX1 || hasX2) ? 2 : 0) + 2) * elemBytes + 4 +
                           (elemBytes == 2 ? 4 : 0);
  int64_t maxTile = int64_t(p.ubBytes / perElem) / 16 * 16;   // multiple of 16: 32-byte aligned for 2 and 4 bytes
  if (maxTile < 16) return Fail(why, "unified buffer too small");
  TileHidden(H, std::min<int64_t>(RoundUp(H, 16), std::min<int64_t>(maxTile, 8192)), td);
  return CommitUb(FinalizeUbBytes(*td), p, td, why, "unified buffer overflow");
}

// ------------------------------------------------------------------------------------------ grouped matmul
void GroupedMatmulOnChipBytes(const GroupedMatmulTilingData& td, uint64_t* l1, uint64_t* l0a, uint64_t* l0b,
                              uint64_t* l0c) {
  const uint64_t eb = uint64_t(td.elemBytes);
  *l0a = 2 * uint64_t(td.baseM) * td.baseK * eb;                       // ping-pong
  *l0b = 2 * uint64_t(td.baseK) * td.baseN * eb;
  *l0c = uint64_t(td.baseM) * td.baseN * 4;                            // float32 accumulation, one tile
  *l1 = *l0a + *l0b + kGmmZeroL1Bytes;                                 // L1 ping-pong of the same tiles + zero tile
}

bool GroupedMatmulTiling(int64_t M, int64_t K, int64_t N, int64_t groups, int32_t groupListType, bool transposeW,
                         int32_t elemBytes, const MoePlatform& p, GroupedMatmulTilingData* td, const char** why) {
  if (M < 0 || K <= 0 || N <= 0 || groups <= 0) return Fail(why, "x [M, K], weight [E, K, N] with K, N, E > 0");
  if (groupListType != 0 && groupListType != 1) return Fail(why, "group_list_type must be 0 (cumsum) or 1 (count)");
  if (elemBytes != 2 && elemBytes != 4) return Fail(why, "GEMM operands must be float32, float16 or bfloat16");
  if (elemBytes == 4 && !transposeW)
    return Fail(why, "a float32 weight must be given as [E, N, K] (transpose_weight): the Cube's 2D load transposes "
                     "16-bit fractals only");
  if (p.aicCores == 0) return Fail(why, "platform reports no cube cores");
  if (K > 65535 || N > 65535) return Fail(why, "K and N must be at most 65535 (ND2NZ row stride)");
  *td = GroupedMatmulTilingData{};
  td->m = M;
  td->k = K;
  td->n = N;
  td->groups = groups;
  td->groupListType = groupListType;
  td->transposeW = transposeW;
  td->elemBytes = elemBytes;
  // L0 tiles: the largest of the standard shapes (128-wide first) that fit double-buffered L0A / L0B / L1 and one
  // L0C tile; baseK spans 256 bytes of a row (a multiple of the fractal's C0 and of 16)
  const int64_t cands[][3] = {{128, 256, 128}, {128, 128, 128}, {64, 128, 128}, {64, 64, 64}, {32, 32, 32},
                              {16, 16, 32}};
  bool found = false;
  for (const auto& c : cands) {
    td->baseM = c[0];
    td->baseN = c[1];
    td->baseK = elemBytes == 2 ? c[2] : c[2] / 2;
    td->depthA1 = td->depthB1 = 2;
    uint64_t l1, l0a, l0b, l0c;
    GroupedMatmulOnChipBytes(*td, &l1, &l0a, &l0b, &l0c);
    if (l0a <= p.l0aBytes && l0b <= p.l0bBytes && l0c <= p.l0cBytes && l1 <= p.l1Bytes) {
      td->l1Bytes = uint32_t(l1);
      td->l0aBytes = uint32_t(l0a);
      td->l0bBytes = uint32_t(l0b);
      td->l0cBytes = uint32_t(l0c);
      found = true;
      break;
    }
  }
  if (!found) return Fail(why, "no L0/L1 tile fits the cube core's buffers");
  td->singleM = td->baseM;   // one work tile = one L0C tile
  td->singleN = td->baseN;
  td->usedCores = p.aicCores;
  return true;
}

}  // namespace moe_av4
