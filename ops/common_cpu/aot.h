// Shared helpers for MindSpore `ops.Custom(func_type="aot")` CPU kernels.
// Kernel ABI: int Fn(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
//                    void* stream, void* extra); params = inputs then outputs; return 0 on success.
#pragma once
#include <cstdint>
#include <cstring>

namespace av4 {

// bf16 tensors reach the kernel as raw 16-bit words: widen exactly, narrow with round-to-nearest-even.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline bool is_bf16(const char* dtype) { return std::strcmp(dtype, "bfloat16") == 0; }
inline bool is_f32(const char* dtype) { return std::strcmp(dtype, "float32") == 0; }

inline int64_t numel(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// Read element i of a float32 or bf16 buffer as float.
inline float load(const void* p, bool bf16, int64_t i) {
  return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

inline void store(void* p, bool bf16, int64_t i, float v) {
  if (bf16) static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  else static_cast<float*>(p)[i] = v;
}

}  // namespace av4
