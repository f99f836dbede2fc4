// Runs the op_host code of the MoE ops (OpDefs, InferShape, InferDataType, tiling functions) through the CPU
// stand-in of the CANN host API (ops/ascendc_common/host, -DAV4_ASCENDC_STANDIN): every op is registered for
// ascend910b and ascend910_93, shapes and dtypes infer as documented, and each tiling function writes a tiling
// whose block dim fits the platform's cores, whose UB use fits its UB, and whose workspace covers the kernel's.
// Prints "ok" on success.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../op_host/moe_host_shim.h"
#include "standin_check.h"

static gert::Shape Sh(std::vector<int64_t> dims) {
  gert::Shape s;
  s.dims_ = dims;
  return s;
}

static ops::OpDef* Op(const char* name) {
  auto it = ops::Registry().find(name);
  CHECK(it != ops::Registry().end());
  const auto& socs = it->second->AICore().socs_;
  CHECK(socs.size() == 2 && socs[0] == "ascend910b" && socs[1] == "ascend910_93");
  CHECK(it->second->inferShape_ != nullptr && it->second->inferDataType_ != nullptr);
  return it->second;
}

static gert::TilingContext Ctx(std::vector<gert::StorageShape> in, std::vector<ge::DataType> dt, fe::PlatFormInfos* p) {
  gert::TilingContext c;
  c.inputs_ = in;
  for (ge::DataType d : dt) {
    gert::CompileTimeTensorDesc desc;
    desc.dtype_ = d;
    c.descs_.push_back(desc);
  }
  c.platform_ = p;
  return c;
}

int main() {
  fe::PlatFormInfos plat;  // 910B1: 48 AIV, 192 KB UB
  // ------------------------------------------------------------------ MoeGatingTopKAv4
  {
    ops::OpDef* op = Op("MoeGatingTopKAv4");
    gert::InferShapeContext is;
    is.inputs_ = {Sh({2048, 256}), Sh({256}), Sh({}), Sh({})};
    is.outputs_.resize(3);
    is.attrs_ = op->MakeAttrs({6, 1, 1, 0, 0, 2, 1, 1.5, 1e-20});
    CHECK(op->inferShape_(&is) == ge::GRAPH_SUCCESS);
    CHECK(is.outputs_[0].dims_ == std::vector<int64_t>({2048, 6}) && is.outputs_[2].dims_[1] == 256);
    gert::InferDataTypeContext dc;
    dc.inputs_ = {ge::DT_FLOAT};
    CHECK(op->inferDataType_(&dc) == ge::GRAPH_SUCCESS && dc.outputs_[1] == ge::DT_INT32);
    gert::TilingContext tc = Ctx({S({2048, 256}), S({256}), S({}), S({})}, {ge::DT_FLOAT}, &plat);
    tc.attrs_ = op->MakeAttrs({6, 1, 1, 0, 0, 2, 1, 1.5, 1e-20});
    CHECK(op->AICore().tiling_(&tc) == ge::GRAPH_SUCCESS);
    const auto* td = tc.GetTilingData<moe_av4::MoeGatingTopKTilingData>();
    CHECK(tc.blockDim_ >= 1 && tc.blockDim_ <= plat.aivCores && td->k == 6 && td->hasBias == 1);
    CHECK(td->ubBytes <= plat.ubBytes && td->normType == 2 && td->routedScalingFactor == 1.5f);
    // hash layer: ids + table given, bias ignored
    gert::TilingContext th = Ctx({S({64, 256}), S({}), S({64}), S({1000, 6})}, {ge::DT_FLOAT}, &plat);
    th.attrs_ = op->MakeAttrs({6, 1, 1, 0, 0, 2, 1, 1.5, 1e-20});
    CHECK(op->AICore().tiling_(&th) == ge::GRAPH_SUCCESS);
    CHECK(th.GetTilingData<moe_av4::MoeGatingTopKTilingData>()->hashed == 1);
    // renorm 1 and k > E are refused
    th.attrs_ = op->MakeAttrs({6, 1, 1, 0, 1, 2, 1, 1.5, 1e-20});
    CHECK(op->AICore().tiling_(&th) != ge::GRAPH_SUCCESS);
    is.attrs_ = op->MakeAttrs({300, 1, 1, 0, 0, 2, 1, 1.5, 1e-20});
    CHECK(op->inferShape_(&is) != ge::GRAPH_SUCCESS);
  }
  // ------------------------------------------------------------------ MoeInitRoutingAv4
  for (int mode = 0; mode < 2; ++mode) {
    ops::OpDef* op = Op("MoeInitRoutingAv4");
    const std::vector<double> attrs = {0, 60, 256, double(mode), 1, 1};
    gert::InferShapeContext is;
    is.inputs_ = {Sh({2048, 4096}), Sh({2048, 6})};
    is.outputs_.resize(4);
    is.attrs_ = op->MakeAttrs(attrs);
    CHECK(op->inferShape_(&is) == ge::GRAPH_SUCCESS);
    if (mode == 1) CHECK(is.outputs_[0].dims_ == std::vector<int64_t>({256, 60, 4096}));
    else CHECK(is.outputs_[0].dims_ == std::vector<int64_t>({2048 * 6, 4096}));
    CHECK(is.outputs_[1].dims_ == std::vector<int64_t>({2048 * 6}) && is.outputs_[2].dims_[0] == 256);
    gert::InferDataTypeContext dc;
    dc.inputs_ = {ge::DT_BF16, ge::DT_INT32};
    CHECK(op->inferDataType_(&dc) == ge::GRAPH_SUCCESS && dc.outputs_[0] == ge::DT_BF16);
    gert::TilingContext tc = Ctx({S({2048, 4096}), S({2048, 6})}, {ge::DT_BF16, ge::DT_INT32}, &plat);
    tc.attrs_ = op->MakeAttrs(attrs);
    CHECK(op->AICore().tiling_(&tc) == ge::GRAPH_SUCCESS);
    const auto* td = tc.GetTilingData<moe_av4::MoeInitRoutingTilingData>();
    CHECK(tc.tilingKey_ == moe_av4::MOE_TILING_KEY && td->elemBytes == 2 && td->dropPad == mode);
    CHECK(tc.blockDim_ == td->split.usedCores && tc.blockDim_ <= plat.aivCores);
    CHECK(tc.workspaces_.size() == 1 && tc.workspaces_[0] >= td->workspaceBytes + (16u << 20));
    CHECK(td->ubBytes <= plat.ubBytes);
  }
  // ------------------------------------------------------------------ MoeFinalizeRoutingAv4
  {
    ops::OpDef* op = Op("MoeFinalizeRoutingAv4");
    gert::InferShapeContext is;
    is.inputs_ = {Sh({12288, 4096}), Sh({12288}), Sh({2048, 4096}), Sh({}), Sh({}), Sh({2048, 6}), Sh({})};
    is.outputs_.resize(1);
    is.attrs_ = op->MakeAttrs({2});
    CHECK(op->inferShape_(&is) == ge::GRAPH_SUCCESS && is.outputs_[0].dims_ == std::vector<int64_t>({2048, 4096}));
    gert::TilingContext tc = Ctx({S({256, 60, 4096}), S({12288}), S({2048, 4096}), S({}), S({}), S({2048, 6}), S({})},
                                 {ge::DT_FLOAT}, &plat);
    tc.attrs_ = op->MakeAttrs({3});
    CHECK(op->AICore().tiling_(&tc) == ge::GRAPH_SUCCESS);
    const auto* td = tc.GetTilingData<moe_av4::MoeFinalizeRoutingTilingData>();
    CHECK(td->expandedRows == 256 * 60 && td->hasX1 == 1 && td->hasX2 == 0 && td->dropPadMode == 3);
    CHECK(td->ubBytes <= plat.ubBytes && tc.blockDim_ <= plat.aivCores);
    CHECK(tc.tilingKey_ == moe_av4::MOE_TILING_KEY);
    // moe_combine: no x1 / x2 / bias / expert_idx -- scales is IR input 5 but only the 3rd instantiated input
    gert::TilingContext tm = Ctx({S({12288, 4096}), S({12288}), S({}), S({}), S({}), S({2048, 6}), S({})},
                                 {ge::DT_BF16}, &plat);
    tm.attrs_ = op->MakeAttrs({2});
    CHECK(op->AICore().tiling_(&tm) == ge::GRAPH_SUCCESS);
    const auto* tdm = tm.GetTilingData<moe_av4::MoeFinalizeRoutingTilingData>();
    CHECK(tdm->tokens == 2048 && tdm->k == 6 && tdm->hidden == 4096 && tdm->hasX1 == 0 && tdm->hasBias == 0);
    is.inputs_ = {Sh({12288, 4096}), Sh({12288}), Sh({}), Sh({}), Sh({}), Sh({2048, 6}), Sh({})};
    is.attrs_ = op->MakeAttrs({2});
    CHECK(op->inferShape_(&is) == ge::GRAPH_SUCCESS && is.outputs_[0].dims_ == std::vector<int64_t>({2048, 4096}));
  }
  // ------------------------------------------------------------------ GroupedMatmulAv4
  for (int tw = 0; tw < 2; ++tw) {
    ops::OpDef* op = Op("GroupedMatmulAv4");
    gert::InferShapeContext is;
    is.inputs_ = {Sh({12288, 4096}), tw ? Sh({64, 2048, 4096}) : Sh({64, 4096, 2048}), Sh({64})};
    is.outputs_.resize(1);
    is.attrs_ = op->MakeAttrs({0, double(tw)});
    CHECK(op->inferShape_(&is) == ge::GRAPH_SUCCESS && is.outputs_[0].dims_ == std::vector<int64_t>({12288, 2048}));
    gert::TilingContext tc = Ctx({S({12288, 4096}), tw ? S({64, 2048, 4096}) : S({64, 4096, 2048}), S({64})},
                                 {ge::DT_BF16}, &plat);
    tc.attrs_ = op->MakeAttrs({0, double(tw)});
    CHECK(op->AICore().tiling_(&tc) == ge::GRAPH_SUCCESS);
    const auto* td = tc.GetTilingData<moe_av4::GroupedMatmulTilingData>();
    CHECK(td->n == 2048 && td->k == 4096 && td->transposeW == tw && td->baseM == 128);
    CHECK(tc.blockDim_ == plat.aivCores / 2);
    is.attrs_ = op->MakeAttrs({0, double(1 - tw)});   // K mismatch once transposed the other way
    CHECK(op->inferShape_(&is) != ge::GRAPH_SUCCESS);
  }
  std::printf("ok\n");
  return 0;
}
