// g++ -std=c++17 -O1 -I ../op_host tiling_check.cc && ./a.out   (run by tests/ops/test_attention_ascendc.py)
// Checks the host tiling of the three attention kernels over many shapes and platforms:
//   * UB: the reserved bytes fit the budget (UB - reserve) and every buffer is whole 32-byte blocks;
//   * split: per-core ranges are contiguous, non-empty, cover every item once; simulated kernel loops
//     (rows x head groups, items x channel groups, key blocks) touch every element exactly once;
//   * balance: no core's cost exceeds the mean by more than the largest single item.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attention_tiling.h"

using namespace av4_tiling;

static int g_fail = 0, g_cases = 0;
#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      if (g_fail < 20) {                                                  \
        std::printf("FAIL %s:%d %s | ", __FILE__, __LINE__, #cond);       \
        std::printf(__VA_ARGS__);                                         \
        std::printf("\n");                                                \
      }                                                                   \
      ++g_fail;                                                           \
    }                                                                     \
  } while (0)

template <typename CostFn>
static void check_split(const uint32_t* split, uint32_t used, uint64_t n, uint32_t cores, CostFn cost, const char* what) {
  CHECK(used >= 1 && used <= cores && used <= kMaxCores, "%s used=%u cores=%u", what, used, cores);
  CHECK(split[0] == 0 && split[used] == n, "%s ends %u..%u n=%llu", what, split[0], split[used], (unsigned long long)n);
  long double total = 0, maxItem = 0, maxCore = 0;
  for (uint64_t i = 0; i < n; ++i) total += cost(i), maxItem = cost(i) > maxItem ? cost(i) : maxItem;
  for (uint32_t c = 0; c < used; ++c) {
    CHECK(split[c] < split[c + 1], "%s empty core %u", what, c);
    long double cc = 0;
    for (uint64_t i = split[c]; i < split[c + 1]; ++i) cc += cost(i);
    maxCore = cc > maxCore ? cc : maxCore;
  }
  if (n >= used) CHECK(maxCore <= total / used + maxItem + 1e-6, "%s imbalance max %.1Lf mean %.1Lf item %.1Lf", what,
                       maxCore, total / used, maxItem);
}

static void attn_case(const AttnShape& s, const Platform& p) {
  ++g_cases;
  SparseAttnTiling t;
  const char* why = "";
  const bool ok = TileSparseAttn(s, p, &t, &why);
  CHECK(ok, "attn B%u S%u H%u D%u: %s", s.B, s.S, s.H, s.D, why);
  if (!ok) return;
  CHECK(t.ubUsed <= p.ubBytes - kUbReserve, "attn ub %llu > %llu", (unsigned long long)t.ubUsed,
        (unsigned long long)p.ubBytes);
  CHECK(t.dAlign % 16 == 0 && t.dAlign >= s.D && t.dAlign - s.D < 16, "dAlign %u D %u", t.dAlign, s.D);
  CHECK((1ull * t.entryBlock * t.dAlign * s.dtypeBytes) % kBlock == 0, "kv tile not 32B");
  CHECK(t.entryAlign % 8 == 0 && t.listAlign % 8 == 0 && t.listAlign >= s.W + s.K, "aligns");
  CHECK(t.headGroup >= 1 && t.headGroup <= s.H && t.numHeadGroups * t.headGroup >= s.H &&
            (t.numHeadGroups - 1) * t.headGroup < s.H, "head groups %u x %u H %u", t.numHeadGroups, t.headGroup, s.H);
  const uint64_t rows = 1ull * s.B * s.S;
  const bool cube = t.tilingKey == ATTN_KEY_CUBE;
  CHECK(cube == (s.dtypeBytes == 2), "key %u for %u-byte dtype", t.tilingKey, s.dtypeBytes);
  if (cube) {   // Cube design: M <= 128, L1 / L0C budgets, both vector halves cover the group
    CHECK(t.mAlign % 16 == 0 && t.mAlign >= t.headGroup && t.mAlign <= 128 && t.l1Used <= p.l1Bytes &&
              2ull * t.mAlign * kAttnEntryTile * 4 <= kL0CBytes && t.headHalf * 2 >= t.headGroup &&
              t.dTiles * 128 >= t.dAlign && (t.dTiles - 1) * 128 < t.dAlign, "cube tile mA %u hg %u", t.mAlign,
          t.headGroup);
    if (t.headGroup < s.H && t.headGroup < 128) {
      const uint32_t up = t.headGroup * 2 > s.H ? s.H : t.headGroup * 2;
      CHECK(AttnCubeUbBytes(s, (up + 1) / 2, t.dAlign, t.listAlign) > p.ubBytes - kUbReserve ||
                AttnCubeL1Bytes(s, static_cast<uint32_t>(AlignUp(up, 16)), t.dAlign) > p.l1Bytes || up > 128,
            "cube head group %u not maximal", t.headGroup);
    }
    const uint32_t groups = p.aicCores < p.aivCores / 2 ? p.aicCores : p.aivCores / 2;
    check_split(t.rowSplit, t.usedCores, rows, groups, [&](uint64_t r) {
      return (long double)((AttnRowCost(s, r) + kAttnEntryTile - 1) / kAttnEntryTile + 1);
    }, "attn cube");
  } else {
    // a larger head group must not have fitted (the tiling prefers fewer KV re-reads)
    if (t.headGroup < s.H) CHECK(AttnUbBytes(s, t.dAlign, t.headGroup * 2 > s.H ? s.H : t.headGroup * 2, 8) >
                                     p.ubBytes - kUbReserve, "head group %u not maximal", t.headGroup);
    check_split(t.rowSplit, t.usedCores, rows, p.aivCores, [&](uint64_t r) { return (long double)AttnRowCost(s, r); },
                "attn");
  }
  // simulate the kernel's loops: every (row, head) once (key 1: each group's heads split over the two sub-blocks)
  std::vector<uint8_t> seen(rows * s.H, 0);
  for (uint32_t c = 0; c < t.usedCores; ++c)
    for (uint64_t r = t.rowSplit[c]; r < t.rowSplit[c + 1]; ++r)
      for (uint32_t g = 0; g < t.numHeadGroups; ++g) {
        const uint32_t h0 = g * t.headGroup, nh = (h0 + t.headGroup <= s.H) ? t.headGroup : s.H - h0;
        if (cube) {
          const uint32_t first = nh < t.headHalf ? nh : t.headHalf;
          for (uint32_t v = 0; v < 2; ++v)
            for (uint32_t h = h0 + (v ? first : 0); h < h0 + (v ? nh : first); ++h) ++seen[r * s.H + h];
        } else {
          for (uint32_t h = h0; h < h0 + nh; ++h) ++seen[r * s.H + h];
        }
      }
  for (auto v : seen) CHECK(v == 1, "attn (row, head) visited %u times", v);
}

static void indexer_case(const IndexerShape& s, const Platform& p) {
  ++g_cases;
  IndexerTiling t;
  const char* why = "";
  const bool ok = TileIndexer(s, p, &t, &why);
  if (!ok && p.ubBytes < 196352 && s.topk >= 2048) return;   // top-2048 x 64 heads needs 910B's 192 KB UB
  if (s.d % 16 || s.H > 64) {   // outside the Cube design: refused with the reason
    CHECK(!ok, "indexer d%u H%u accepted", s.d, s.H);
    return;
  }
  CHECK(ok, "indexer S%u H%u d%u N%u topk%u: %s", s.S, s.H, s.d, s.N, s.topk, why);
  if (!ok) return;
  CHECK(t.ubUsed <= p.ubBytes - kUbReserve && t.l1Used <= p.l1Bytes, "indexer ub / l1");
  CHECK(t.topk == (s.topk < s.N ? s.topk : s.N), "topk clamp");
  CHECK(t.topkAlign % 32 == 0 && t.topkAlign >= t.topk && t.topk + t.keyBlock <= 4095, "topkAlign %u", t.topkAlign);
  CHECK(t.mAlign % 16 == 0 && t.mAlign >= 2 * s.H && t.mAlign <= 128 && t.keyBlock == 128, "cube tile");
  CHECK(2ull * t.mAlign * t.kTile * s.dtypeBytes <= kL0ABytes && 2ull * t.mAlign * t.keyBlock * 4 <= kL0CBytes, "L0");
  CHECK(t.kTile * s.dtypeBytes % 32 == 0 && t.dAlign % (32 / s.dtypeBytes) == 0, "whole fractals");
  const uint32_t groups = p.aicCores < p.aivCores / 2 ? p.aicCores : p.aivCores / 2;
  const uint32_t half = (s.S + 1) / 2;
  CHECK(t.pairs == s.B * half, "pairs");
  check_split(t.pairSplit, t.usedGroups, t.pairs, groups, [&](uint64_t q) {
    const uint64_t t1 = MinU(2 * (q % half) + 1, s.S - 1);
    return (long double)((IndexerVisible(s, t1) + 127) / 128 + 1);
  }, "indexer");
  // each row is one sub-block of exactly one pair; the pair's key blocks cover every visible key of both rows
  std::vector<uint8_t> seen(1ull * s.B * s.S, 0);
  for (uint32_t q = 0; q < t.pairs; ++q) {
    const uint32_t b = q / half, t0 = 2 * (q % half);
    const uint32_t rows = t0 + 1 < s.S ? 2 : 1;
    for (uint32_t i = 0; i < rows; ++i) ++seen[1ull * b * s.S + t0 + i];
    const uint64_t most = IndexerVisible(s, t0 + rows - 1);
    CHECK(IndexerVisible(s, t0) <= most, "pair rows out of order");
  }
  for (auto v : seen) CHECK(v == 1, "indexer row in %u pairs", v);
}

static void compress_case(const CompressShape& s, const Platform& p) {
  ++g_cases;
  CompressTiling t;
  const char* why = "";
  const bool ok = TileCompress(s, p, &t, &why);
  CHECK(ok, "compress S%u c%u ratio%u: %s", s.S, s.c, s.ratio, why);
  if (!ok) return;
  CHECK(t.ubUsed <= p.ubBytes - kUbReserve, "compress ub %llu", (unsigned long long)t.ubUsed);
  CHECK(t.chanGroup % 16 == 0 && t.chanGroup <= t.cAlign, "chan group %u", t.chanGroup);
  CHECK(t.nBlocks == s.S / s.ratio && t.slots == (s.overlap ? 2 : 1) * s.ratio, "blocks/slots");
  const uint64_t items = 1ull * s.B * t.nBlocks;
  if (items == 0) {
    CHECK(t.usedCores == 0, "no work but %u cores", t.usedCores);
    return;
  }
  check_split(t.itemSplit, t.usedCores, items, p.aivCores, [](uint64_t) { return 1.0L; }, "compress");
  std::vector<uint8_t> seen(items * s.c, 0);
  for (uint32_t core = 0; core < t.usedCores; ++core)
    for (uint64_t it = t.itemSplit[core]; it < t.itemSplit[core + 1]; ++it)
      for (uint32_t g = 0; g < t.numChanGroups; ++g) {
        const uint32_t c0 = g * t.chanGroup, nc = c0 + t.chanGroup <= s.c ? t.chanGroup : s.c - c0;
        for (uint32_t ch = c0; ch < c0 + nc; ++ch) ++seen[it * s.c + ch];
      }
  for (auto v : seen) CHECK(v == 1, "compress (item, channel) visited %u times", v);
}

int main() {
  const uint64_t l1 = 512 * 1024;
  const Platform plats[] = {{48, 196352, 24, l1}, {40, 196608, 20, l1}, {20, 196608, 10, l1}, {7, 196608, 3, l1},
                            {2, 196608, 1, l1},   {48, 131072, 24, l1}, {24, 253952, 12, l1}};
  for (const Platform& p : plats) {
    for (uint32_t dt : {2u, 4u}) {
      // sparse attention: V4 shapes, ragged dims, tiny sequences, decode rows, HCA and CSA
      for (uint32_t S : {1u, 3u, 17u, 128u, 1000u, 4096u})
        for (uint32_t H : {1u, 3u, 16u, 64u, 128u})
          for (uint32_t D : {16u, 100u, 512u}) {
            attn_case({1, S, H, D, S + S / 4, 128, 512, 0, 0, 0, dt, 0.044f}, p);
            attn_case({2, S, H, D, S + S / 128, S < 128 ? S : 128, 0, 128, S, 0, dt, 0.044f}, p);
          }
      attn_case({4, 1, 64, 512, 128 + 8192, 128, 0, 128, 128, 1048575, dt, 0.044f}, p);   // decode at 1M, HCA
      attn_case({1, 16384, 64, 512, 16384 + 4096, 128, 512, 0, 0, 0, dt, 0.044f}, p);
      for (uint32_t S : {1u, 5u, 64u, 1000u, 16384u})
        for (uint32_t H : {1u, 8u, 63u, 64u, 65u})
          for (uint32_t topk : {4u, 512u, 1024u, 2048u}) {
            const uint32_t N = S / 4;
            if (N == 0) continue;
            indexer_case({1, S, H, 128, N, topk, 4, 0, dt}, p);
            indexer_case({2, S, H, 72, N, topk, 4, 0, dt}, p);   // refused: d not a multiple of 16
            indexer_case({2, S, H, 64, N, topk, 4, 0, dt}, p);
          }
      indexer_case({1, 1, 64, 128, 262144, 512, 4, 1048575, dt}, p);   // decode at 1M
      for (uint32_t S : {3u, 4u, 16u, 130u, 4096u})
        for (uint32_t c : {8u, 100u, 128u, 512u}) {
          compress_case({2, S, c, 4, 1, dt, 1e-6f}, p);
          compress_case({1, S, c, 128, 0, dt, 1e-6f}, p);
          compress_case({1, S, c, 16, 0, dt, 1e-6f}, p);
        }
    }
  }
  std::printf("%d tiling cases, %d failures\n", g_cases, g_fail);
  return g_fail ? 1 : 0;
}
