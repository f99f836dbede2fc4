// Stand-in for CANN's "register/op_def_registry.h" (+ the gert contexts it exposes) for host-side compile checks
// and tiling tests without the toolkit. Method names and signatures follow the CANN op-development API used by
// msOpGen projects (OpDef / OpParamDef / OpAICoreDef, gert::InferShapeContext, gert::InferDataTypeContext,
// gert::TilingContext); the bodies are a minimal in-memory model so a test can call a tiling function with a
// hand-built context. Not the real implementation, but it models the two CANN rules a type-correct host source can
// still break (metadef inc/external/exe_graph/runtime/{infer_shape,tiling,extended_kernel}_context.h, runtime_attrs.h):
//  * inputs: a context holds the instantiated inputs only. GetInputShape(i) / GetInputDesc(i) take the INSTANCE
//    index (absent optional inputs are skipped, out of range -> nullptr); GetRequiredInputShape(ir) /
//    GetOptionalInputShape(ir) take the IR prototype index (absent -> nullptr). Tests list inputs by IR index; an
//    input with no dims is "not given".
//  * attributes: GetAttrs()->GetAttrPointer<T>(i) is a bare reinterpret_cast of the i-th attribute's storage in
//    CANN (a Bool is 1 byte, an Int 8, a Float 4). The stand-in stores each attribute with the type its OpDef
//    declares (tests build them with OpDef::MakeAttrs) and aborts when T does not match, naming the attribute.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <typeinfo>
#include <vector>

namespace fe {
struct PlatFormInfos {     // the stand-in platform: filled by tests (real one comes from platform_config/*.ini)
  uint32_t aivCores = 48;
  uint64_t ubBytes = 196608;
};
}  // namespace fe

namespace ge {
enum DataType { DT_FLOAT = 0, DT_FLOAT16 = 1, DT_INT8 = 2, DT_INT32 = 3, DT_BF16 = 27 };
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
enum class AttrKind { Int, Float, Bool };
struct AttrValue {
  AttrKind kind;
  int64_t i;
  float f;
  bool b;
};
class RuntimeAttrs {
 public:
  template <typename T>
  const T* GetAttrPointer(size_t index) const {
    if (index >= values_.size()) return nullptr;
    const AttrValue& v = values_[index];
    const char* want = v.kind == AttrKind::Int ? "int64_t" : v.kind == AttrKind::Float ? "float" : "bool";
    const bool ok = (v.kind == AttrKind::Int && typeid(T) == typeid(int64_t)) ||
                    (v.kind == AttrKind::Float && typeid(T) == typeid(float)) ||
                    (v.kind == AttrKind::Bool && typeid(T) == typeid(bool));
    if (!ok) {
      std::fprintf(stderr, "host stand-in: attribute %zu (%s) is %s, read as GetAttrPointer<%s>\n", index,
                   index < names_.size() ? names_[index].c_str() : "?", want, typeid(T).name());
      std::abort();
    }
    return reinterpret_cast<const T*>(v.kind == AttrKind::Int ? static_cast<const void*>(&v.i)
                                      : v.kind == AttrKind::Float ? static_cast<const void*>(&v.f)
                                                                  : static_cast<const void*>(&v.b));
  }
  std::vector<AttrValue> values_;
  std::vector<std::string> names_;
};

namespace detail {
template <typename S>
inline bool Given(const S& s);
// inputs_ lists the IR inputs; those with no dims are not instantiated (absent optional inputs)
template <typename S>
inline const S* Instance(const std::vector<S>& inputs, size_t index) {
  for (const S& s : inputs)
    if (Given(s) && index-- == 0) return &s;
  return nullptr;
}
template <typename S>
inline const S* ByIr(const std::vector<S>& inputs, size_t ir) {
  return ir < inputs.size() && Given(inputs[ir]) ? &inputs[ir] : nullptr;
}
}  // namespace detail

class InferShapeContext {
 public:
  const Shape* GetInputShape(size_t i) const { return detail::Instance(inputs_, i); }
  const Shape* GetRequiredInputShape(size_t ir) const { return detail::ByIr(inputs_, ir); }
  const Shape* GetOptionalInputShape(size_t ir) const { return detail::ByIr(inputs_, ir); }
  Shape* GetOutputShape(size_t i) { return &outputs_[i]; }
  const RuntimeAttrs* GetAttrs() const { return &attrs_; }
  std::vector<Shape> inputs_, outputs_;
  RuntimeAttrs attrs_;
};
class InferDataTypeContext {
 public:
  ge::DataType GetInputDataType(size_t i) const { return inputs_[i]; }
  const RuntimeAttrs* GetAttrs() const { return &attrs_; }   // ExtendedKernelContext::GetAttrs (dtype attributes)
  ge::graphStatus SetOutputDataType(size_t i, ge::DataType dt) {
    if (outputs_.size() <= i) outputs_.resize(i + 1);
    outputs_[i] = dt;
    return ge::GRAPH_SUCCESS;
  }
  std::vector<ge::DataType> inputs_, outputs_;
  RuntimeAttrs attrs_;
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
  const StorageShape* GetInputShape(size_t i) const { return detail::Instance(inputs_, i); }
  const StorageShape* GetRequiredInputShape(size_t ir) const { return detail::ByIr(inputs_, ir); }
  const StorageShape* GetOptionalInputShape(size_t ir) const { return detail::ByIr(inputs_, ir); }
  // descs_ lists the instantiated inputs' descriptors (instance index)
  const CompileTimeTensorDesc* GetInputDesc(size_t i) const { return i < descs_.size() ? &descs_[i] : nullptr; }
  const RuntimeAttrs* GetAttrs() const { return &attrs_; }
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
  RuntimeAttrs attrs_;
  fe::PlatFormInfos* platform_ = nullptr;
  uint32_t blockDim_ = 0;
  uint64_t tilingKey_ = 0;
  std::vector<size_t> workspaces_;
  TilingData raw_;
};
namespace detail {
template <>
inline bool Given(const Shape& s) { return s.GetDimNum() != 0; }
template <>
inline bool Given(const StorageShape& s) { return s.GetStorageShape().GetDimNum() != 0; }
}  // namespace detail
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
class OpAttrDef {
 public:
  OpAttrDef& AttrType(Option) { return *this; }
  OpAttrDef& Int(int64_t v) { return Set(gert::AttrKind::Int, v); }
  OpAttrDef& Float(float v) { return Set(gert::AttrKind::Float, v); }
  OpAttrDef& Bool(bool v) { return Set(gert::AttrKind::Bool, v ? 1.0 : 0.0); }
  gert::AttrKind kind_ = gert::AttrKind::Int;
  double default_ = 0;

 private:
  OpAttrDef& Set(gert::AttrKind k, double v) {
    kind_ = k;
    default_ = v;
    return *this;
  }
};
class OpDef {
 public:
  explicit OpDef(const char* type) : type_(type) {}
  virtual ~OpDef() = default;
  OpAttrDef& Attr(const char* name) {
    attrOrder_.push_back(name);
    return attrs_[name];
  }
  // runtime attributes in declaration order, each stored as its declared type (missing values: the default)
  gert::RuntimeAttrs MakeAttrs(const std::vector<double>& values) const {
    gert::RuntimeAttrs r;
    for (size_t i = 0; i < attrOrder_.size(); ++i) {
      const OpAttrDef& a = attrs_.at(attrOrder_[i]);
      const double v = i < values.size() ? values[i] : a.default_;
      r.values_.push_back(gert::AttrValue{a.kind_, static_cast<int64_t>(v), static_cast<float>(v), v != 0});
      r.names_.push_back(attrOrder_[i]);
    }
    return r;
  }
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
  std::map<std::string, OpAttrDef> attrs_;
  std::vector<std::string> attrOrder_;
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
