// Runs the registered op_host code (OpDef, InferShape, InferDataType, tiling) against the stand-in CANN host
// headers with fake contexts: registration of both SoC configs, output shapes/dtypes, block dim = used cores and
// tiling data = the plain-C++ tiling for 910B (48 AIV), 910B3 (40 AIV) and 910C dies. Prints "ok ..." lines; any
// mismatch exits non-zero. Built and run by tests/ops/test_mhc_ascendc.py.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "hc_tiling.h"
#include "register/op_def_registry.h"
#include "standin_check.h"

using namespace mhc_av4;

int main() {
  auto& reg = ops::Registry();
  for (const char* op : {"HcPreAv4", "HcHeadAv4", "HcPostAv4"}) {
    CHECK(reg.count(op) == 1);
    const auto& socs = reg[op]->aicore_.socs_;
    CHECK(socs.size() == 2 && socs[0] == "ascend910b" && socs[1] == "ascend910_93");
    CHECK(reg[op]->aicore_.tiling_ && reg[op]->inferShape_ && reg[op]->inferDataType_);
  }
  const fe::PlatFormInfos platforms[] = {{48, 196608}, {40, 196608}, {48, 196352}};
  const int64_t tokens[] = {1, 7, 48, 4096, 65537};
  for (const auto& plat : platforms)
    for (int64_t T : tokens)
      for (int64_t D : {4096, 7168})
        for (ge::DataType dt : {ge::DT_FLOAT, ge::DT_BF16}) {
          const int64_t hc = 4;
          for (bool head : {false, true}) {
            const char* op = head ? "HcHeadAv4" : "HcPreAv4";
            const int64_t M = head ? hc : (2 + hc) * hc;
            gert::InferShapeContext is;
            is.inputs_ = {{{T, hc, D}}, {{M, hc * D}}, {{head ? 1 : 3}}, {{M}}, {{head ? 2 : 3}}};
            is.outputs_.resize(head ? 3 : 5);
            CHECK(reg[op]->inferShape_(&is) == ge::GRAPH_SUCCESS);
            CHECK(is.outputs_[0].dims_ == std::vector<int64_t>({T, D}));
            CHECK(is.outputs_[head ? 1 : 3].dims_ == std::vector<int64_t>({T, M}));
            CHECK(is.outputs_[head ? 2 : 4].dims_ == std::vector<int64_t>({T}));
            if (!head) CHECK(is.outputs_[2].dims_ == std::vector<int64_t>({T, hc, hc}));
            gert::InferDataTypeContext it;
            it.inputs_ = {dt, ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT};
            CHECK(reg[op]->inferDataType_(&it) == ge::GRAPH_SUCCESS);
            CHECK(it.outputs_[0] == dt && it.outputs_[1] == ge::DT_FLOAT);

            gert::TilingContext tc;
            fe::PlatFormInfos pi = plat;
            tc.platform_ = &pi;
            tc.inputs_ = {S({T, hc, D}), S({M, hc * D}), S({head ? 1 : 3}), S({M}), S({head ? 2 : 3})};
            tc.descs_.resize(5);
            tc.descs_[0].dtype_ = dt;
            CHECK(reg[op]->aicore_.tiling_(&tc) == ge::GRAPH_SUCCESS);
            HcPreTilingData want{};
            const char* why = "";
            CHECK(HcPreTiling(T, D, hc, dt == ge::DT_BF16 ? 2 : 4, head, {plat.aivCores, plat.ubBytes}, &want, &why));
            CHECK(tc.raw_.size_ == sizeof(HcPreTilingData));
            CHECK(std::memcmp(tc.raw_.data_.data(), &want, sizeof(want)) == 0);
            // mixed kernel: one block per AIC + two AIV group; system + user workspace
            CHECK(tc.blockDim_ == static_cast<uint32_t>(want.groups) && 2 * tc.blockDim_ <= plat.aivCores);
            CHECK(tc.workspaces_.size() == 1 && tc.workspaces_[0] == (16u << 20) + static_cast<size_t>(want.wsBytes));
            CHECK(want.ubBytes <= plat.ubBytes);
          }
          gert::TilingContext tc;
          fe::PlatFormInfos pi = plat;
          tc.platform_ = &pi;
          tc.inputs_ = {S({T, D}), S({T, hc, D}), S({T, hc}), S({T, hc, hc})};
          tc.descs_.resize(4);
          tc.descs_[0].dtype_ = dt;
          CHECK(reg["HcPostAv4"]->aicore_.tiling_(&tc) == ge::GRAPH_SUCCESS);
          HcPostTilingData want{};
          const char* why = "";
          CHECK(HcPostTiling(T, D, hc, dt == ge::DT_BF16 ? 2 : 4, {plat.aivCores, plat.ubBytes}, &want, &why));
          CHECK(std::memcmp(tc.raw_.data_.data(), &want, sizeof(want)) == 0);
          CHECK(tc.blockDim_ == static_cast<uint32_t>(want.usedCores));
        }
  std::printf("ok host op_def/infer/tiling checks\n");
  return 0;
}
