// Declarations-only stand-ins for the attention family (see README.md in this folder).
//
// Kernel side: only the AscendC APIs the attention kernels use that decls_core.h / decls_mhc.h / decls_moe.h do not
// declare (Relu, UB->UB DataCopy, Sort, Extract), signatures as in the public interface headers. Kernels are
// checked with `g++ -fsyntax-only -I ops/ascendc_common -include decls_attention.h <kernel>.cpp` (the kernel itself
// includes "kernel_operator.h"); once kernel_operator.h includes this file the -include becomes redundant.
//
// Host side (AV4_HOST_SIDE): self-contained, because the shared host/register/op_def_registry.h has no OpDef::Attr,
// no RuntimeAttrs / GetAttrs, no GetOptionalInputShape and no GetLibApiWorkSpaceSize yet; the attention op_host
// files are checked with `-DAV4_SYNTAX_ONLY -DAV4_HOST_SIDE -include decls_attention.h`. When the shared host
// stand-in gains those, this section can go.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#ifndef AV4_HOST_SIDE
// =================================================================================================== kernel side
#include "decls_core.h"

namespace AscendC {

template <typename T>
__aicore__ void Relu(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count);
template <typename T>
__aicore__ void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, const uint32_t count);
// Sort: descending by value into (value, index) pairs; repeatTime groups of 32 elements, isFullSort merges them all.
template <typename T, bool isFullSort>
__aicore__ void Sort(const LocalTensor<T>& dst, const LocalTensor<T>& concat, const LocalTensor<uint32_t>& index,
                     LocalTensor<T>& tmp, const int32_t repeatTime);
template <typename T>
__aicore__ void Extract(const LocalTensor<T>& dstValue, const LocalTensor<uint32_t>& dstIndex,
                        const LocalTensor<T>& sorted, const int32_t repeatTime);

}  // namespace AscendC

#else
// ===================================================================================================== host side
namespace ge {
enum graphStatus { GRAPH_SUCCESS = 0, GRAPH_FAILED = 1 };
enum DataType { DT_FLOAT, DT_FLOAT16, DT_BF16, DT_INT32, DT_INT64 };
enum Format { FORMAT_ND };
}  // namespace ge

namespace fe {
class PlatFormInfos;
}

namespace gert {
class Shape {
 public:
  size_t GetDimNum() const;
  int64_t GetDim(size_t i) const;
  void SetDimNum(size_t n);
  void SetDim(size_t i, int64_t v);
};
class StorageShape {
 public:
  const Shape& GetStorageShape() const;
};
class CompileTimeTensorDesc {
 public:
  ge::DataType GetDataType() const;
};
class RuntimeAttrs {
 public:
  template <typename T>
  const T* GetAttrPointer(size_t index) const;
};
class TilingData {
 public:
  void* GetData();
  size_t GetCapacity() const;
  void SetDataSize(size_t size);
};
class TilingContext {
 public:
  fe::PlatFormInfos* GetPlatformInfo();
  const StorageShape* GetInputShape(size_t i);
  const StorageShape* GetOptionalInputShape(size_t i);
  const CompileTimeTensorDesc* GetInputDesc(size_t i);
  const RuntimeAttrs* GetAttrs();
  TilingData* GetRawTilingData();
  size_t* GetWorkspaceSizes(size_t n);
  void SetBlockDim(uint32_t n);
  void SetTilingKey(uint64_t key);
};
class InferShapeContext {
 public:
  const Shape* GetInputShape(size_t i);
  const Shape* GetOptionalInputShape(size_t i);
  Shape* GetOutputShape(size_t i);
  const RuntimeAttrs* GetAttrs();
};
class InferDataTypeContext {
 public:
  ge::DataType GetInputDataType(size_t i);
  void SetOutputDataType(size_t i, ge::DataType t);
};
}  // namespace gert

namespace platform_ascendc {
enum class CoreMemType { L0_A, L0_B, L0_C, L1, L2, UB, HBM };
class PlatformAscendC {
 public:
  explicit PlatformAscendC(fe::PlatFormInfos* info);
  uint32_t GetCoreNumAiv() const;
  uint32_t GetCoreNumAic() const;
  void GetCoreMemSize(CoreMemType type, uint64_t& size) const;
  uint32_t GetLibApiWorkSpaceSize() const;
};
}  // namespace platform_ascendc

namespace ops {
enum Option { REQUIRED, OPTIONAL };
class OpParamDef {
 public:
  OpParamDef& ParamType(Option o);
  OpParamDef& DataType(std::initializer_list<ge::DataType> t);
  OpParamDef& Format(std::initializer_list<ge::Format> f);
};
class OpAttrDef {
 public:
  OpAttrDef& AttrType(Option o);
  OpAttrDef& Float(float v);
  OpAttrDef& Int(int64_t v);
  OpAttrDef& Bool(bool v);
};
class OpAICoreConfig {};
class OpAICoreDef {
 public:
  OpAICoreDef& SetTiling(ge::graphStatus (*fn)(gert::TilingContext*));
  OpAICoreDef& AddConfig(const char* soc);
};
class OpDef {
 public:
  explicit OpDef(const char* name);
  OpParamDef& Input(const char* name);
  OpParamDef& Output(const char* name);
  OpAttrDef& Attr(const char* name);
  OpDef& SetInferShape(ge::graphStatus (*fn)(gert::InferShapeContext*));
  OpDef& SetInferDataType(ge::graphStatus (*fn)(gert::InferDataTypeContext*));
  OpAICoreDef& AICore();
};
}  // namespace ops
#define OP_ADD(Name) static ops::OpDef* av4_op_add_##Name = new Name(#Name)
#endif
