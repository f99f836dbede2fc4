// Stand-in for the CANN "kernel_operator.h" used only for g++ -fsyntax-only checks of our AscendC kernels.
// See README.md: declarations only, signatures as in the public AscendC interface headers.
#pragma once
#include "decls_core.h"

// One line per op family (each declares only the APIs that family alone uses).
#include "decls_mhc.h"
#include "decls_moe.h"
#include "decls_attention.h"
#include "decls_engram.h"
