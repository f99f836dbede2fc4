// Shape and dtype inference steps shared by the OpDefs of every family (ops/<family>/ascendc/op_host/*.cpp),
// header-only over CANN's register/op_def_registry.h (or its stand-in, ops/ascendc_common/host). An op's InferShape /
// InferDataType function stays in its family's file (the OpDef names it); these are the steps it is made of.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "register/op_def_registry.h"

namespace av4_host {

// *shape = dims
inline void SetShape(gert::Shape* shape, std::initializer_list<int64_t> dims) {
  shape->SetDimNum(dims.size());
  size_t i = 0;
  for (int64_t d : dims) shape->SetDim(i++, d);
}

// Output 0 takes input 0's dtype (the data stream), outputs 1 .. outputs-1 are `rest` (statistics, indices).
inline ge::graphStatus InferDtypes(gert::InferDataTypeContext* context, size_t outputs,
                                   ge::DataType rest = ge::DT_FLOAT) {
  context->SetOutputDataType(0, context->GetInputDataType(0));
  for (size_t i = 1; i < outputs; ++i) context->SetOutputDataType(i, rest);
  return ge::GRAPH_SUCCESS;
}

}  // namespace av4_host
