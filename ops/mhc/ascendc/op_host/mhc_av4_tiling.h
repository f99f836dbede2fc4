// Host tiling entry points of the mHC AscendC ops (registered by mhc_av4_def.cpp through AICore().SetTiling).
#pragma once
#include "register/op_def_registry.h"

namespace optiling {
ge::graphStatus HcPreAv4Tiling(gert::TilingContext* context);
ge::graphStatus HcHeadAv4Tiling(gert::TilingContext* context);
ge::graphStatus HcPostAv4Tiling(gert::TilingContext* context);
}  // namespace optiling
