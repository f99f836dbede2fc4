// Runs the registered op_host code (OpDef, InferShape, InferDataType, tiling) of EngramGateAv4 / EngramDequantAv4
// against the stand-in CANN host headers with fake contexts (registration of both SoC configs, typed attributes,
// output shapes / dtypes, block dim = used cores, tiling data = the plain-C++ tiling) for 910B (48 AIV), 910B3
// (40 AIV) and 910C dies, then sweeps the plain tiling over many shapes: UB within budget, aligned chunks, every
// token / group on exactly one core. Prints "ok ..."; any mismatch exits non-zero. Built by
// tests/ops/test_engram_ascendc.py.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engram_tiling.h"
#include "register/op_def_registry.h"
#include "standin_check.h"

using namespace engram_av4;

namespace {

// The cores' EngramRange items follow one another without gap or overlap, none empty; returns where the last ends.
int64_t RangesEnd(int32_t usedCores, int32_t frontCores, int64_t base) {
  int64_t next = 0;
  for (int32_t b = 0; b < usedCores; ++b) {
    int64_t s = 0, n = 0;
    EngramRange(b, frontCores, base, &s, &n);
    CHECK(s == next && n >= 1);
    next = s + n;
  }
  return next;
}

void CheckGateSweep(const AivPlatform& p) {
  for (int64_t T : {1, 2, 15, 16, 17, 47, 48, 49, 100, 777, 4096, 65537})
    for (int64_t D : {16, 48, 64, 80, 1024, 4096, 5120, 7168})
      for (int32_t hc : {1, 4, 8})
        for (int32_t xb : {2, 4}) {
          EngramGateTilingData td{};
          const char* why = "";
          CHECK(EngramGateTiling(T, D, hc, xb, 1e-20f, p, &td, &why));
          CHECK(td.ubBytes == EngramGateUbBytes(td) && td.ubBytes <= p.ubBytes);
          CHECK(td.dChunk % 16 == 0 && td.dTail % 16 == 0 && td.dTail > 0 && td.dTail <= td.dChunk);
          CHECK(static_cast<int64_t>(td.dChunks - 1) * td.dChunk + td.dTail == D);
          CHECK(td.tileT >= 1 && td.tileT <= kMaxTileT && td.usedCores >= 1 &&
                static_cast<uint32_t>(td.usedCores) <= p.aivCores);
          CHECK(RangesEnd(td.usedCores, td.frontCores, td.baseTokens) == T);
        }
}

void CheckDequantSweep(const AivPlatform& p) {
  for (int64_t N : {1, 3, 37, 512, 4096, 65536})
    for (int64_t L : {192, 6144, 256 * 24 * 2})
      for (int64_t g : {8, 16, 32, 64})
        for (int32_t yb : {2, 4}) {
          if (L % g) continue;
          EngramDequantTilingData td{};
          const char* why = "";
          CHECK(EngramDequantTiling(N, L, L / g, yb, p, &td, &why));
          CHECK(td.ubBytes == EngramDequantUbBytes(td) && td.ubBytes <= p.ubBytes);
          CHECK(td.chunkGroups % kBrcbGroups == 0 && td.chunkGroups / kBrcbGroups <= 255 && td.g == g);
          const int64_t blocks = RangesEnd(td.usedCores, td.frontCores, td.baseBlocks);
          CHECK(blocks * kBrcbGroups >= td.groups && (blocks - 1) * kBrcbGroups < td.groups);
        }
  EngramDequantTilingData td{};
  const char* why = "";
  CHECK(!EngramDequantTiling(2, 48, 4, 4, p, &td, &why) && std::strstr(why, "g % 8"));
  CHECK(!EngramDequantTiling(2, 256, 2, 4, p, &td, &why) && std::strstr(why, "g > 64"));
  EngramGateTilingData tg{};
  CHECK(!EngramGateTiling(4, 40, 4, 2, 1e-20f, p, &tg, &why) && std::strstr(why, "D % 16"));
  CHECK(!EngramGateTiling(4, 64, 9, 2, 1e-20f, p, &tg, &why) && std::strstr(why, "hc"));
}

}  // namespace

int main() {
  auto& reg = ops::Registry();
  for (const char* op : {"EngramGateAv4", "EngramDequantAv4"}) {
    CHECK(reg.count(op) == 1);
    const auto& socs = reg[op]->aicore_.socs_;
    CHECK(socs.size() == 2 && socs[0] == "ascend910b" && socs[1] == "ascend910_93");
    CHECK(reg[op]->aicore_.tiling_ && reg[op]->inferShape_ && reg[op]->inferDataType_);
  }
  const fe::PlatFormInfos platforms[] = {{48, 196608}, {40, 196608}, {48, 196352}};
  for (const auto& plat : platforms) {
    for (int64_t T : {1, 7, 48, 4096})
      for (ge::DataType dt : {ge::DT_FLOAT, ge::DT_BF16}) {
        const int64_t hc = 4, D = 4096;
        ops::OpDef* gate = reg["EngramGateAv4"];
        gert::InferShapeContext is;
        is.inputs_ = {{{T, hc, D}}, {{T, (hc + 1) * D}}, {{hc, D}}, {{T}}};
        is.outputs_.resize(1);
        CHECK(gate->inferShape_(&is) == ge::GRAPH_SUCCESS && is.outputs_[0].dims_ == std::vector<int64_t>({T, hc, D}));
        gert::InferDataTypeContext it;
        it.inputs_ = {dt, dt, ge::DT_FLOAT, ge::DT_FLOAT};
        CHECK(gate->inferDataType_(&it) == ge::GRAPH_SUCCESS && it.outputs_[0] == dt);
        gert::TilingContext tc;
        fe::PlatFormInfos pi = plat;
        tc.platform_ = &pi;
        tc.inputs_ = {S({T, hc, D}), S({T, (hc + 1) * D}), S({hc, D}), S({T})};
        tc.descs_.resize(4);
        tc.descs_[0].dtype_ = dt;
        tc.attrs_ = gate->MakeAttrs({1e-20});
        CHECK(gate->aicore_.tiling_(&tc) == ge::GRAPH_SUCCESS);
        EngramGateTilingData want{};
        const char* why = "";
        CHECK(EngramGateTiling(T, D, hc, dt == ge::DT_BF16 ? 2 : 4, 1e-20f, {plat.aivCores, plat.ubBytes}, &want, &why));
        CHECK(tc.raw_.size_ == sizeof(want) && std::memcmp(tc.raw_.data_.data(), &want, sizeof(want)) == 0);
        CHECK(tc.blockDim_ == static_cast<uint32_t>(want.usedCores) && tc.workspaces_.size() == 1);

        ops::OpDef* deq = reg["EngramDequantAv4"];
        const int64_t L = 6144, G = L / 32;
        for (int64_t dst : {0, 1}) {
          gert::InferShapeContext ds;
          ds.inputs_ = {{{T, L}}, {{T, G}}};
          ds.outputs_.resize(1);
          CHECK(deq->inferShape_(&ds) == ge::GRAPH_SUCCESS && ds.outputs_[0].dims_ == std::vector<int64_t>({T, L}));
          gert::InferDataTypeContext dd;
          dd.inputs_ = {ge::DT_INT8, ge::DT_FLOAT};
          dd.attrs_ = deq->MakeAttrs({static_cast<double>(dst)});
          CHECK(deq->inferDataType_(&dd) == ge::GRAPH_SUCCESS && dd.outputs_[0] == (dst ? ge::DT_BF16 : ge::DT_FLOAT));
          gert::TilingContext dc;
          dc.platform_ = &pi;
          dc.inputs_ = {S({T, L}), S({T, G})};
          dc.descs_.resize(2);
          dc.descs_[0].dtype_ = ge::DT_INT8;
          dc.attrs_ = deq->MakeAttrs({static_cast<double>(dst)});
          CHECK(deq->aicore_.tiling_(&dc) == ge::GRAPH_SUCCESS);
          EngramDequantTilingData w{};
          CHECK(EngramDequantTiling(T, L, G, dst ? 2 : 4, {plat.aivCores, plat.ubBytes}, &w, &why));
          CHECK(std::memcmp(dc.raw_.data_.data(), &w, sizeof(w)) == 0 && dc.blockDim_ == static_cast<uint32_t>(w.usedCores));
        }
      }
    CheckGateSweep({plat.aivCores, plat.ubBytes});
    CheckDequantSweep({plat.aivCores, plat.ubBytes});
  }
  std::printf("ok host op_def/infer/tiling checks and tiling sweeps\n");
  return 0;
}
