// Host tiling entry points of the Engram AscendC ops (registered by engram_av4_def.cpp through AICore().SetTiling).
#pragma once
#include "register/op_def_registry.h"

namespace optiling {
ge::graphStatus EngramGateAv4Tiling(gert::TilingContext* context);
ge::graphStatus EngramDequantAv4Tiling(gert::TilingContext* context);
}  // namespace optiling
