// Host tiling of EngramGateAv4 / EngramDequantAv4 (see engram_tiling.h): core split, chunk sizes and the UB buffers
// of op_kernel/engram_gate_av4.cpp and engram_dequant_av4.cpp, proven within the platform's UB before launch.
#include "engram_tiling.h"

#include <cmath>

namespace engram_av4 {
namespace {

uint32_t Align32(int64_t bytes) { return static_cast<uint32_t>(EngramAlignUp(bytes, kUbAlign)); }

void GateBuffers(EngramGateTilingData* td, int32_t dc) {
  const int64_t hc = td->hc, xb = td->xBytes;
  td->dChunk = dc;
  td->hInBytes = Align32(hc * dc * xb);
  td->kInBytes = Align32(hc * dc * xb);
  td->vInBytes = Align32(dc * xb);
  td->outBytes = Align32(hc * dc * xb);
  td->wBytes = Align32(hc * dc * 4);
  td->castBytes = xb == 4 ? 0 : Align32(2 * hc * dc * 4);
  td->tmpBytes = Align32(3 * static_cast<int64_t>(dc) * 4);
  td->workBytes = Align32(static_cast<int64_t>(dc) * 4);
  td->redBytes = Align32(3 * hc * kRedSlot * 4);
  td->tinyBytes = Align32(2 * kMaxHc * 4);
  td->ubBytes = static_cast<uint32_t>(EngramGateUbBytes(*td));
}

void DequantBuffers(EngramDequantTilingData* td, int32_t cg) {
  const int64_t n = static_cast<int64_t>(cg) * td->g;
  td->chunkGroups = cg;
  td->rowInBytes = Align32(n);
  td->scaleInBytes = Align32(static_cast<int64_t>(cg) * 4);
  td->halfBytes = Align32(n * 2);
  td->floatBytes = Align32(n * 4);
  td->brcbBytes = Align32(static_cast<int64_t>(cg) * kUbAlign);
  td->outBytes = Align32(n * td->yBytes);
  td->ubBytes = static_cast<uint32_t>(EngramDequantUbBytes(*td));
}

}  // namespace

uint64_t EngramGateUbBytes(const EngramGateTilingData& td) {
  return 2ull * td.hInBytes + 2ull * td.kInBytes + 2ull * td.vInBytes + 2ull * td.outBytes + td.wBytes +
         td.castBytes + td.tmpBytes + td.workBytes + td.redBytes + td.tinyBytes;
}

uint64_t EngramDequantUbBytes(const EngramDequantTilingData& td) {
  return 2ull * td.rowInBytes + 2ull * td.scaleInBytes + td.halfBytes + td.floatBytes + td.brcbBytes +
         2ull * td.outBytes;
}

bool EngramGateTiling(int64_t T, int64_t D, int32_t hc, int32_t xBytes, float eps, const AivPlatform& p,
                      EngramGateTilingData* td, const char** why) {
  *td = EngramGateTilingData{};
  if (T < 1) return *why = "no tokens (T must be >= 1)", false;
  if (hc < 1 || hc > kMaxHc) return *why = "hc must be in [1, 8]", false;
  if (D < 16 || D % 16 != 0) return *why = "D % 16 != 0 (32-byte rows of bf16) or D < 16", false;
  if (D > 65535) return *why = "D must be at most 65535 (16-bit copy strides)", false;
  if (xBytes != 2 && xBytes != 4) return *why = "h / kv must be float32 or bf16", false;
  if (p.aivCores < 1) return *why = "no AIV cores", false;
  td->T = T;
  td->D = D;
  td->hc = hc;
  td->xBytes = xBytes;
  const int64_t cores = T < static_cast<int64_t>(p.aivCores) ? T : static_cast<int64_t>(p.aivCores);
  td->usedCores = static_cast<int32_t>(cores);
  td->baseTokens = T / cores;
  td->frontCores = static_cast<int32_t>(T % cores);
  const int64_t most = td->baseTokens + (td->frontCores > 0 ? 1 : 0);
  td->tileT = static_cast<int32_t>(most < kMaxTileT ? most : kMaxTileT);
  td->eps = eps;
  td->invD = static_cast<float>(1.0 / static_cast<double>(D));
  td->invSqrtD = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  td->clamp = 1e-6f;
  // the whole row when it fits, else the largest multiple of 64 elements that does
  int64_t dc = D;
  for (;;) {
    GateBuffers(td, static_cast<int32_t>(dc));
    if (td->ubBytes <= p.ubBytes) break;
    const int64_t next = dc > 64 ? EngramAlignUp(dc, 64) - 64 : dc - 16;
    if (next < 16) return *why = "UB too small for one 16-element chunk", false;
    dc = next;
  }
  td->dChunks = static_cast<int32_t>((D + dc - 1) / dc);
  td->dTail = static_cast<int32_t>(D - (td->dChunks - 1) * dc);
  return true;
}

bool EngramDequantTiling(int64_t N, int64_t L, int64_t nScales, int32_t yBytes, const AivPlatform& p,
                         EngramDequantTilingData* td, const char** why) {
  *td = EngramDequantTilingData{};
  if (N < 1 || L < 1) return *why = "no rows (N and L must be >= 1)", false;
  if (nScales < 1 || L % nScales != 0) return *why = "the scales must split each row into equal groups", false;
  const int64_t g = L / nScales;
  if (g % 8 != 0 || g > 64) return *why = "group size g % 8 != 0 or g > 64 (one float32 repeat)", false;
  if (yBytes != 2 && yBytes != 4) return *why = "dst_type must be float32 or bf16", false;
  if (p.aivCores < 1) return *why = "no AIV cores", false;
  td->N = N;
  td->L = L;
  td->g = static_cast<int32_t>(g);
  td->yBytes = yBytes;
  td->groups = N * nScales;
  const int64_t blocks = (td->groups + kBrcbGroups - 1) / kBrcbGroups;
  const int64_t cores = blocks < static_cast<int64_t>(p.aivCores) ? blocks : static_cast<int64_t>(p.aivCores);
  td->usedCores = static_cast<int32_t>(cores);
  td->baseBlocks = blocks / cores;
  td->frontCores = static_cast<int32_t>(blocks % cores);
  const int64_t most = (td->baseBlocks + (td->frontCores > 0 ? 1 : 0)) * kBrcbGroups;
  int64_t cg = most < 255 * kBrcbGroups ? most : 255 * kBrcbGroups;   // Brcb: <= 255 repeats of 8 scales
  for (;;) {
    DequantBuffers(td, static_cast<int32_t>(cg));
    if (td->ubBytes <= p.ubBytes) break;
    if (cg <= kBrcbGroups) return *why = "UB too small for one block of 8 groups", false;
    cg = cg > 64 ? (cg * 3 / 4) / kBrcbGroups * kBrcbGroups : cg - kBrcbGroups;
  }
  return true;
}

}  // namespace engram_av4
