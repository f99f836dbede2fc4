// Host tiling of the mHC AscendC kernels (see hc_tiling.h). Strategy:
//  * tokens are split over the AIV cores as evenly as possible (counts differ by at most one);
//  * hc_pre/hc_head (mixed AIC/AIV kernel): the AIC cores project x . fn^T and x . x^T (sums of squares on the
//    diagonal) on the Cube unit in tiles of up to 128 tokens, K split across cores when there are fewer tiles than
//    cores (decode); the AIV cores walk their tokens in tiles of tileT (coefficients, collapse in D chunks);
//  * the largest (tileT, dChunk) - in that priority - whose buffers fit in UB minus a reserve wins.
#include "hc_tiling.h"

namespace mhc_av4 {
namespace {

constexpr uint64_t kUbReserve = 2048;   // left to the AscendC runtime / API scratch
constexpr int32_t kDChunks[] = {8192, 4096, 2048, 1024, 512, 256, 128, 64};

uint32_t A32(int64_t bytes) { return static_cast<uint32_t>(HcAlignUp(bytes, kUbAlign)); }

void Split(int64_t T, uint32_t cores, int32_t* used, int32_t* front, int64_t* base) {
  const int64_t c = T < static_cast<int64_t>(cores) ? T : static_cast<int64_t>(cores);
  *used = static_cast<int32_t>(c);
  *base = T / c;
  *front = static_cast<int32_t>(T % c);
}

void PreBuffers(HcPreTilingData* td) {
  const int64_t rows = td->M + 1, t = td->tileT, dc = td->dChunk;
  td->lanes = static_cast<int32_t>(HcAlignUp(t, 8));
  td->rawInBytes = A32(t * td->n16 * 4);
  td->sqInBytes = A32(t * 8 * 4);
  td->coefBytes = A32((2 * rows + 4) * td->lanes * 4) + A32(t * td->n16 * 4) + A32(t * 8 * 4);
  td->stageBytes = A32(t * td->M * 4) + A32(t * 4) +
                   (td->head ? 0 : A32(t * td->hc * 4) + A32(t * td->hc * td->hc * 4));
  td->yInBytes = static_cast<uint32_t>(td->hc * A32(dc * td->xBytes));
  td->yCastBytes = A32((td->xBytes == 4 ? 1 : td->hc + 1) * dc * 4);
  td->yOutBytes = A32(dc * td->xBytes);
  td->splitBytes = td->xBytes == 4 ? 0 : A32(td->splitChunk * 4) + 2 * A32(td->splitChunk * 2) +
                                             A32(td->splitChunk * 4);
  td->ubBytes = static_cast<uint32_t>(HcPreUbBytes(*td));
}

// The Cube projection's tiles: baseM tokens (<= 128) x K in baseK steps, K split into parts so that at least
// `groups` (tile, part) items exist when the tokens alone give fewer (decode); L0A / L0B ping-pong and one L0C tile
// must fit the AI Cube core.
bool CubeTiling(HcPreTilingData* td) {
  // bf16 x: splitting fn moves 12 M K bytes (read float32, write hi + lo, the Cube's read), casting x to float32
  // 10 T K (read bf16, write and read float32): the cheaper wins (decode)
  td->xCast = td->xBytes == 2 && 5 * td->T < 6 * td->M ? 1 : 0;
  const int64_t eb = td->xCast ? 4 : td->xBytes;
  td->nCols = td->xBytes == 4 || td->xCast ? td->M : 2 * td->M;
  td->n16 = static_cast<int32_t>(HcAlignUp(td->nCols, 16));
  bool fit = false;
  for (int64_t m = 128; m >= 16 && !fit; m /= 2) {
    td->baseM = static_cast<int32_t>(td->T < m ? HcAlignUp(td->T, 16) : m);
    for (td->baseK = static_cast<int32_t>(256 / eb); td->baseK >= 16; td->baseK /= 2) {
      // L0A: x tile; L0B: B (n16 columns) and x^T (baseM columns); L0C: projections and x x^T; all but L0C
      // double-buffered, L1 holds the ping-pong x and B tiles
      const int64_t l0a = 2 * td->baseM * td->baseK * eb, l0b = 2 * td->baseK * (td->n16 + td->baseM) * eb;
      const int64_t l0c = td->baseM * (td->n16 + td->baseM) * 4, l1 = 2 * td->baseK * (td->baseM + td->n16) * eb;
      if (l0a <= kL0ABytes && l0b <= kL0BBytes && l0c <= kL0CBytes && l1 <= kL1Bytes) {
        fit = true;
        break;
      }
    }
  }
  if (!fit) return false;
  td->tiles = (td->T + td->baseM - 1) / td->baseM;
  const int64_t steps = (td->K + td->baseK - 1) / td->baseK;   // the last step may be short (a multiple of 64)
  int64_t split = td->tiles >= td->groups ? 1 : (td->groups + td->tiles - 1) / td->tiles;
  split = split > steps ? steps : split;
  td->kPart = (steps + split - 1) / split * td->baseK;
  td->kSplit = static_cast<int32_t>((td->K + td->kPart - 1) / td->kPart);
  td->wsFnOffset = 0;
  td->wsRawOffset = td->xBytes == 4 ? 0 : HcAlignUp(td->xCast ? td->T * td->K * 4 : 2 * td->M * td->K * 2, 512);
  td->wsSqOffset = HcAlignUp(td->wsRawOffset + static_cast<int64_t>(td->kSplit) * td->T * td->n16 * 4, 512);
  td->wsBytes = td->wsSqOffset + static_cast<int64_t>(td->kSplit) * td->tiles * td->baseM * td->baseM * 4;
  td->splitChunk = td->xBytes == 4 ? 0 : 2048;
  return true;
}

}  // namespace

uint64_t HcPreUbBytes(const HcPreTilingData& td) {
  return 2ull * td.rawInBytes + 2ull * td.sqInBytes + td.coefBytes + td.stageBytes + 2ull * td.yInBytes +
         td.yCastBytes + 2ull * td.yOutBytes + td.splitBytes;
}

uint64_t HcPostUbBytes(const HcPostTilingData& td) {
  return 2ull * td.fInBytes + 2ull * td.resInBytes + td.castBytes + 2ull * td.outBytes;
}

bool HcPreTiling(int64_t T, int64_t D, int32_t hc, int32_t xBytes, bool head, const AivPlatform& p,
                 HcPreTilingData* td, const char** why) {
  *why = "";
  if (T < 1 || D < 1 || hc < 1 || hc > kMaxHc || (xBytes != 2 && xBytes != 4) || p.aivCores == 0) {
    *why = "unsupported shape, dtype or platform";
    return false;
  }
  if ((hc * D) % 64 != 0 || D % 16 != 0) {
    *why = "needs D % 16 == 0 and hc*D % 64 == 0 (32-byte aligned rows, whole Cube K steps of 64)";
    return false;
  }
  *td = HcPreTilingData{};
  td->T = T;
  td->D = D;
  td->K = hc * D;
  td->hc = hc;
  td->M = head ? hc : (2 + hc) * hc;
  td->head = head ? 1 : 0;
  td->xBytes = xBytes;
  // mixed kernel: groups of one AIC + two AIV (910B / 910C ratio); tokens over the AIV cores, the projection over
  // the AIC cores
  td->groups = static_cast<int32_t>(p.aivCores / 2 > 0 ? p.aivCores / 2 : 1);
  if (td->K > 65535) {
    *why = "needs hc*D <= 65535 (ND2NZ row stride of the Cube load)";
    return false;
  }
  if (!CubeTiling(td)) {
    *why = "no Cube tile fits L0A/L0B/L0C";
    return false;
  }
  Split(T, static_cast<uint32_t>(2 * td->groups), &td->usedCores, &td->frontCores, &td->baseTokens);
  const int64_t maxPerCore = td->baseTokens + (td->frontCores > 0 ? 1 : 0);
  const uint64_t budget = p.ubBytes > kUbReserve ? p.ubBytes - kUbReserve : 0;
  for (int32_t t = kMaxTileT; t >= 1; t /= 2) {
    if (t > maxPerCore && t > 1) continue;
    for (int32_t dc : kDChunks) {
      if (dc > HcAlignUp(D, 64) && dc > 64) continue;
      td->tileT = t;
      td->dChunk = dc;
      PreBuffers(td);
      if (td->ubBytes <= budget) {
        td->dChunks = static_cast<int32_t>((D + dc - 1) / dc);
        td->dTail = static_cast<int32_t>(D - static_cast<int64_t>(td->dChunks - 1) * dc);
        return true;
      }
    }
  }
  *why = "no tiling fits in UB";
  return false;
}

bool HcPostTiling(int64_t T, int64_t D, int32_t hc, int32_t xBytes, const AivPlatform& p, HcPostTilingData* td,
                  const char** why) {
  *why = "";
  if (T < 1 || D < 1 || hc < 1 || hc > kMaxHc || (xBytes != 2 && xBytes != 4) || p.aivCores == 0) {
    *why = "unsupported shape, dtype or platform";
    return false;
  }
  if (D % 16 != 0) {
    *why = "needs D % 16 == 0 (32-byte aligned rows)";
    return false;
  }
  *td = HcPostTilingData{};
  td->T = T;
  td->D = D;
  td->hc = hc;
  td->xBytes = xBytes;
  Split(T, p.aivCores, &td->usedCores, &td->frontCores, &td->baseTokens);
  const uint64_t budget = p.ubBytes > kUbReserve ? p.ubBytes - kUbReserve : 0;
  for (int32_t dc : kDChunks) {
    if (dc > HcAlignUp(D, 64) && dc > 64) continue;
    td->dChunk = dc;
    td->fInBytes = A32(static_cast<int64_t>(dc) * xBytes);
    td->resInBytes = static_cast<uint32_t>(hc * A32(static_cast<int64_t>(dc) * xBytes));
    td->castBytes = A32(static_cast<int64_t>(hc + 2) * dc * 4);
    td->outBytes = static_cast<uint32_t>(hc * A32(static_cast<int64_t>(dc) * xBytes));
    td->ubBytes = static_cast<uint32_t>(HcPostUbBytes(*td));
    if (td->ubBytes <= budget) {
      td->dChunks = static_cast<int32_t>((D + dc - 1) / dc);
      td->dTail = static_cast<int32_t>(D - static_cast<int64_t>(td->dChunks - 1) * dc);
      return true;
    }
  }
  *why = "no tiling fits in UB";
  return false;
}

}  // namespace mhc_av4
