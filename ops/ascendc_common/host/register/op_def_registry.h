// Stand-in for CANN's "register/op_def_registry.h" (+ the gert contexts it exposes) for host-side compile checks
// and tiling tests without the toolkit. Method names and signatures follow the CANN op-development API used by
// msOpGen projects (OpDef / OpParamDef / OpAICoreDef, gert::InferShapeContext, gert::InferDataTypeContext,
// gert::TilingContext); the bodies are a minimal in-memory model so a test can call a tiling function with a
// hand-built context. Not the real implementation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fe {
struct PlatFormInfos {     // the stand-in platform: filled by tests (real one comes from platform_config/*.ini)
  uint32_t aivCores = 48;
  uint64_t ubBytes = 196608;
};
}  // namespace fe

namespace ge {
enum DataType { DT_FLOAT = 0, DT_FLOAT16 = 1, DT_INT32 = 3, DT_BF16 = 27 };
enum Format { FORMAT_ND = 2 };
using graphStatus = uint32_t;
constexpr graphStatus GRAPH_SUCCESS = 0;
constexpr graphStatus GRAPH_FAILED = 0xFFFFFFFF;
}  // namespace ge

namespace gert {
class Shape {
 public:
  size_t GetDimNum() const { return dims_.size(); }
  int64_t GetDim(size_t i) const { return dims_[i]; }
  void SetDimNum(size_t n) { dims_.resize(n); }
  void SetDim(size_t i, int64_t v) { dims_[i] = v; }
  int64_t GetShapeSize() const {
    int64_t n = 1;
    for (int64_t d : dims_) n *= d;
    return n;
  }
  std::vector<int64_t> dims_;
};
class StorageShape {
 public:
  const Shape& GetStorageShape() const { return shape_; }
  const Shape& GetOriginShape() const { return shape_; }
  Shape shape_;
};
class CompileTimeTensorDesc {
 public:
  ge::DataType GetDataType() const { return dtype_; }
  ge::DataType dtype_ = ge::DT_FLOAT;
};
class InferShapeContext {
 public:
  const Shape* GetInputShape(size_t i) const { return &inputs_[i]; }
  Shape* GetOutputShape(size_t i) { return &outputs_[i]; }
  std::vector<Shape> inputs_, outputs_;
};
class InferDataTypeContext {
 public:
  ge::DataType GetInputDataType(size_t i) const { return inputs_[i]; }
  ge::graphStatus SetOutputDataType(size_t i, ge::DataType dt) {
    if (outputs_.size() <= i) outputs_.resize(i + 1);
    outputs_[i] = dt;
    return ge::GRAPH_SUCCESS;
  }
  std::vector<ge::DataType> inputs_, outputs_;
};
class TilingData {
 public:
  void* GetData() { return data_.data(); }
  size_t GetCapacity() const { return data_.size(); }
  void SetDataSize(size_t n) { size_ = n; }
  std::vector<uint8_t> data_ = std::vector<uint8_t>(4096);
  size_t size_ = 0;
};
class TilingContext {
 public:
  const StorageShape* GetInputShape(size_t i) const { return &inputs_[i]; }
  const CompileTimeTensorDesc* GetInputDesc(size_t i) const { return &descs_[i]; }
  fe::PlatFormInfos* GetPlatformInfo() const { return platform_; }
  const char* GetNodeName() const { return "node"; }
  ge::graphStatus SetBlockDim(uint32_t dim) {
    blockDim_ = dim;
    return ge::GRAPH_SUCCESS;
  }
  ge::graphStatus SetTilingKey(uint64_t key) {
    tilingKey_ = key;
    return ge::GRAPH_SUCCESS;
  }
  size_t* GetWorkspaceSizes(size_t num) {
    workspaces_.resize(num);
    return workspaces_.data();
  }
  TilingData* GetRawTilingData() { return &raw_; }
  template <typename T>
  T* GetTilingData() {
    return reinterpret_cast<T*>(raw_.GetData());
  }
  std::vector<StorageShape> inputs_;
  std::vector<CompileTimeTensorDesc> descs_;
  fe::PlatFormInfos* platform_ = nullptr;
  uint32_t blockDim_ = 0;
  uint64_t tilingKey_ = 0;
  std::vector<size_t> workspaces_;
  TilingData raw_;
};
}  // namespace gert

namespace ops {
enum Option { REQUIRED = 0, OPTIONAL = 1, DYNAMIC = 2 };
using InferShapeFunc = ge::graphStatus (*)(gert::InferShapeContext*);
using InferDataTypeFunc = ge::graphStatus (*)(gert::InferDataTypeContext*);
using TilingFunc = ge::graphStatus (*)(gert::TilingContext*);

class OpParamDef {
 public:
  OpParamDef& ParamType(Option) { return *this; }
  OpParamDef& DataType(std::vector<ge::DataType> types) {
    types_ = types;
    return *this;
  }
  OpParamDef& Format(std::vector<ge::Format>) { return *this; }
  OpParamDef& UnknownShapeFormat(std::vector<ge::Format>) { return *this; }
  std::vector<ge::DataType> types_;
};
class OpAICoreDef {
 public:
  OpAICoreDef& SetTiling(TilingFunc f) {
    tiling_ = f;
    return *this;
  }
  OpAICoreDef& AddConfig(const char* soc) {
    socs_.push_back(soc);
    return *this;
  }
  TilingFunc tiling_ = nullptr;
  std::vector<std::string> socs_;
};
class OpDef {
 public:
  explicit OpDef(const char* type) : type_(type) {}
  virtual ~OpDef() = default;
  OpParamDef& Input(const char* name) { return inputs_[name]; }
  OpParamDef& Output(const char* name) { return outputs_[name]; }
  OpDef& SetInferShape(InferShapeFunc f) {
    inferShape_ = f;
    return *this;
  }
  OpDef& SetInferDataType(InferDataTypeFunc f) {
    inferDataType_ = f;
    return *this;
  }
  OpAICoreDef& AICore() { return aicore_; }
  std::string type_;
  std::map<std::string, OpParamDef> inputs_, outputs_;
  InferShapeFunc inferShape_ = nullptr;
  InferDataTypeFunc inferDataType_ = nullptr;
  OpAICoreDef aicore_;
};
inline std::map<std::string, OpDef*>& Registry() {
  static std::map<std::string, OpDef*> r;
  return r;
}
}  // namespace ops

#define OP_ADD(OpType) \
  static const bool g_##OpType##_added = (ops::Registry()[#OpType] = new OpType(#OpType), true)
