// File and GM plumbing of the emulator drivers (ops/<family>/ascendc/emu/*.cc): inputs come as raw binary files
// (float32 data, int32 / int64 indices) written by the tests, land in GM buffers in the kernel's dtype, and go back
// out as float32 (or raw) files. Include after emu_runtime.h.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace av4_emu {

// number of V values the file holds
template <class V>
size_t FileCount(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) Fail("cannot open %s", path.c_str());
  std::fseek(f, 0, SEEK_END);
  const long bytes = std::ftell(f);
  std::fclose(f);
  return static_cast<size_t>(bytes) / sizeof(V);
}

// the first n values of a binary file (fails when it holds fewer)
template <class V>
std::vector<V> ReadFile(const std::string& path, size_t n) {
  std::vector<V> v(n);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(V), n, f) != n) Fail("cannot read %zu values from %s", n, path.c_str());
  std::fclose(f);
  return v;
}

template <class V>
void WriteFile(const std::string& path, const std::vector<V>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(v.data(), sizeof(V), v.size(), f) != v.size()) Fail("cannot write %s", path.c_str());
  std::fclose(f);
}

// GM buffer of T holding float32 values converted as the kernel's dtype stores them (round to nearest even)
template <class T>
uint8_t* ToGm(const std::vector<float>& v) {
  T* p = static_cast<T*>(GmAlloc(v.size() * sizeof(T)));
  for (size_t i = 0; i < v.size(); ++i) Store(p + i, v[i]);
  return reinterpret_cast<uint8_t*>(p);
}

// GM buffer holding `bytes` bytes of `src` as they are (indices, tiling data)
inline uint8_t* GmCopy(const void* src, size_t bytes) {
  void* p = GmAlloc(bytes);
  std::memcpy(p, src, bytes);
  return static_cast<uint8_t*>(p);
}
template <class V>
uint8_t* GmCopy(const std::vector<V>& v) {
  return GmCopy(v.data(), v.size() * sizeof(V));
}
template <class TD>
uint8_t* TilingGm(const TD& td) {
  return GmCopy(&td, sizeof(TD));
}

// n values of T in GM, as float32
template <class T>
std::vector<float> FromGm(const uint8_t* gm, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Load(reinterpret_cast<const T*>(gm) + i);
  return v;
}

// n values of V in GM, as they are
template <class V>
std::vector<V> GmValues(const uint8_t* gm, size_t n) {
  std::vector<V> v(n);
  std::memcpy(v.data(), gm, n * sizeof(V));
  return v;
}

}  // namespace av4_emu
