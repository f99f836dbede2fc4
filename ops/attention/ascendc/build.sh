#!/usr/bin/env bash
# Build + install the attention family's AscendC ops (AV4SparseAttnSharedKV, AV4LightningIndexer, AV4CompressKV) as the
# CANN custom-op package "av4_attention" for 910B (ascend910b) and 910C (ascend910_93), through MindSpore's
# offline custom-op compiler (mindspore/lib/plugin/ascend/custom_compiler/setup.py, which wraps the msOpGen project).
#
#   bash ops/attention/ascendc/build.sh            # needs CANN (ASCEND_HOME_PATH or /usr/local/Ascend/ascend-toolkit/latest)
#   bash ops/attention/ascendc/build.sh --check    # no CANN needed: host tiling test, syntax checks, emulated kernels
#
# After installing, MindSpore finds the ops through ASCEND_CUSTOM_OPP_PATH / the vendors dir; ops/attention/ascendc.py
# binds them (call its prepare_*() before compiling a graph).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--check" ]]; then
  exec "$PY" -m pytest -q "$ROOT/tests/ops/test_attention_ascendc.py"
fi

CANN="${ASCEND_HOME_PATH:-/usr/local/Ascend/ascend-toolkit/latest}"
if [[ ! -d "$CANN" ]]; then
  echo "CANN toolkit not found at $CANN (set ASCEND_HOME_PATH); use --check for the CPU-side checks" >&2
  exit 2
fi
MS_DIR="$("$PY" -c 'import mindspore, os; print(os.path.dirname(mindspore.__file__))')"
COMPILER="$MS_DIR/lib/plugin/ascend/custom_compiler/setup.py"
SOC="${SOC_VERSION:-ascend910b;ascend910_93}"
INSTALL="${ASCEND_CUSTOM_OPP_PATH:-${ASCEND_OPP_PATH:-$CANN/opp}}"

# The compiler copies op_host/*.{cpp,h} and op_kernel/* into one project; the kernels include ../op_host/*.h, which
# keeps working because both folders are copied side by side.
"$PY" "$COMPILER" --op_host_path "$HERE/op_host" --op_kernel_path "$HERE/op_kernel" \
  --soc_version "$SOC" --ascend_cann_package_path "$CANN" --vendor_name av4_attention \
  --install_path "$INSTALL" -i
echo "installed vendor package av4_attention under $INSTALL/vendors (socs: $SOC)"
