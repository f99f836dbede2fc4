// What the families' op_host checks (ops/<family>/ascendc/tiling/host_check.cc) share when they run the op_host
// code against this stand-in: a check that stops the run naming the failed condition, and shapes built from dims.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "register/op_def_registry.h"

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
      std::exit(1);                                                   \
    }                                                                 \
  } while (0)

inline gert::StorageShape S(std::vector<int64_t> dims) {
  gert::StorageShape s;
  s.shape_.dims_ = dims;
  return s;
}
