// Host tiling of EngramGateAv4 / EngramDequantAv4: reads the AIV core count and the UB size from the platform
// (av4_host::ReadAivPlatform), shapes, dtypes and attributes from the context, and delegates the decisions to the
// plain-C++ tiling in ../tiling/engram_tiling.cc (unit-tested with g++).
#include "engram_av4_tiling.h"

#include "../../../ascendc_common/op_host/host_steps.h"
#include "../tiling/engram_tiling.h"

namespace optiling {

// EngramGateAv4: h [T, hc, D]; attribute 0 eps (Float)
ge::graphStatus EngramGateAv4Tiling(gert::TilingContext* context) {
  av4_host::AivPlatform p{};
  if (!av4_host::ReadAivPlatform(context, &p)) return ge::GRAPH_FAILED;
  const gert::Shape& h = context->GetInputShape(0)->GetStorageShape();
  if (h.GetDimNum() != 3) return ge::GRAPH_FAILED;
  const float* eps = context->GetAttrs()->GetAttrPointer<float>(0);
  engram_av4::EngramGateTilingData td{};
  const char* why = "";
  const int32_t hBytes = av4_host::StreamElemBytes(context->GetInputDesc(0)->GetDataType());
  if (!engram_av4::EngramGateTiling(h.GetDim(0), h.GetDim(2), static_cast<int32_t>(h.GetDim(1)), hBytes,
                                    eps ? *eps : 1e-20f, p, &td, &why))
    return ge::GRAPH_FAILED;
  return av4_host::WriteTiling(context, td, static_cast<uint32_t>(td.usedCores), 0, 0);
}

// EngramDequantAv4: rows [N, L] int8, scales [N, L / g]; attribute 0 dst_type (Int: 0 float32, 1 bf16)
ge::graphStatus EngramDequantAv4Tiling(gert::TilingContext* context) {
  av4_host::AivPlatform p{};
  if (!av4_host::ReadAivPlatform(context, &p)) return ge::GRAPH_FAILED;
  const gert::Shape& rows = context->GetInputShape(0)->GetStorageShape();
  const gert::Shape& scales = context->GetInputShape(1)->GetStorageShape();
  if (rows.GetDimNum() != 2 || scales.GetDimNum() != 2 || scales.GetDim(0) != rows.GetDim(0)) return ge::GRAPH_FAILED;
  const int64_t* dst = context->GetAttrs()->GetAttrPointer<int64_t>(0);
  const int32_t yBytes = (dst != nullptr && *dst == 1) ? 2 : 4;
  engram_av4::EngramDequantTilingData td{};
  const char* why = "";
  if (!engram_av4::EngramDequantTiling(rows.GetDim(0), rows.GetDim(1), scales.GetDim(1), yBytes, p, &td, &why))
    return ge::GRAPH_FAILED;
  return av4_host::WriteTiling(context, td, static_cast<uint32_t>(td.usedCores), 0, 0);
}

}  // namespace optiling
