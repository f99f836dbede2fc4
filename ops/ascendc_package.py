"""Where the CANN custom-op packages of our AscendC families live, and whether the one a binding needs is usable.

One package per op family, named by one rule: vendor ``ascend_v4_<family>`` (``ascend_v4_mhc``, ``ascend_v4_moe``,
``ascend_v4_attention``), built and installed by ``ops/ascendc_common/build_opp.sh FAMILY --install [DIR]``.
Separate packages because CANN installs packages with the same vendor name into one directory and overwrites the
files they share (``liboptiling.so``, the ops-info json, ``libcust_opapi.so``): families built separately cannot
share a vendor, and separate packages let one family be rebuilt, installed or fixed without touching the others.

CANN finds a package in two places, and so does :func:`vendor_dirs`:

* every entry of ``ASCEND_CUSTOM_OPP_PATH`` (a package installed with ``--install-path=DIR`` lives in
  ``DIR/vendors/<vendor>``; its ``bin/set_env.bash`` prepends that directory);
* ``$ASCEND_OPP_PATH/vendors/<vendor>`` (a default install, listed in ``vendors/config.ini``).

An installed package declares its op types in ``op_impl/ai_core/tbe/config/<soc>/aic-<soc>-ops-info.json``, a JSON
object keyed by op type. :func:`package_installed` requires one such file that declares *every* op type a binding
calls, so a stale or partial package never makes a backend look available.

No MindSpore import at module level; this file also runs as a script (the build driver uses it to check what it
just installed): ``python ops/ascendc_package.py VENDOR_DIR OP_TYPE...`` exits 0 when VENDOR_DIR declares them all.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from typing import Iterable, List, Optional

VENDOR_PREFIX = "ascend_v4"
FAMILIES = ("mhc", "moe", "attention", "engram")
OPS_INFO_GLOB = os.path.join("op_impl", "ai_core", "tbe", "config", "*", "aic-*-ops-info*.json")


def vendor_name(family: str) -> str:
    """The vendor (package) name of an op family: ascend_v4_<family>."""
    if family not in FAMILIES:
        raise ValueError(f"unknown AscendC op family {family!r}: one of {', '.join(FAMILIES)}")
    return f"{VENDOR_PREFIX}_{family}"


def vendor_dirs(vendor: str) -> List[str]:
    """Package directories CANN would search for `vendor`, in CANN's order: ASCEND_CUSTOM_OPP_PATH entries
    (colon-separated package roots, first wins), then the default install $ASCEND_OPP_PATH/vendors/<vendor>."""
    dirs: List[str] = []
    for d in os.environ.get("ASCEND_CUSTOM_OPP_PATH", "").split(":"):
        if d and d not in dirs:
            dirs.append(d)
    opp = os.environ.get("ASCEND_OPP_PATH")
    if opp:
        d = os.path.join(opp, "vendors", vendor)
        if d not in dirs:
            dirs.append(d)
    return dirs


def declared_op_types(ops_info_json: str) -> Optional[set]:
    """Op types an ops-info json declares (its top-level keys); None when unreadable or not a JSON object."""
    try:
        with open(ops_info_json, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return set(data) if isinstance(data, dict) else None


def find_ops_info(dirs: Iterable[str], op_types: Iterable[str]) -> Optional[str]:
    """The first ops-info json under one of `dirs` that declares every op type in `op_types`, or None."""
    need = set(op_types)
    if not need:
        raise ValueError("op_types is empty: a binding must name the op types it calls")
    for d in dirs:
        for info in sorted(glob.glob(os.path.join(d, OPS_INFO_GLOB))):
            have = declared_op_types(info)
            if have is not None and need <= have:
                return info
    return None


def package_installed(vendor: str, op_types: Iterable[str]) -> bool:
    """True when a package CANN would find for `vendor` declares all of `op_types` (in one ops-info json)."""
    return find_ops_info(vendor_dirs(vendor), op_types) is not None


def on_ascend() -> bool:
    """True when MindSpore imports and its device target is Ascend."""
    try:
        import mindspore as ms
        return ms.get_context("device_target") == "Ascend"
    except Exception:  # pragma: no cover - no MindSpore, or a broken context
        return False


def available(vendor: str, op_types: Iterable[str]) -> bool:
    """The one availability rule of every AscendC binding: an Ascend device AND the package with all op types.
    The device is checked first, so on CPU no file system look-up happens. When the Ascend resolution is emulated
    on CPU (contract stand-ins) or planned (`ascend-v4 plan`), the package counts as installed."""
    try:
        from .registry import target
        t = target()
        if t.device == "Ascend" and (t.emulated or t.planning):
            return True
    except ImportError:  # run as a script (the build driver): no registry
        pass
    return on_ascend() and package_installed(vendor, op_types)


def install_note(family: str, op_types: Iterable[str]) -> str:
    """The registry note of a family's `ascendc` backend (shown when someone asks for it where it is unavailable)."""
    return (f"needs an Ascend device and the installed CANN package '{vendor_name(family)}' ({len(list(op_types))} "
            f"op types): `bash ops/{family}/ascendc/build.sh --install` on a CANN machine")


def _main(argv: List[str]) -> int:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print("usage: python ops/ascendc_package.py VENDOR_DIR OP_TYPE [OP_TYPE...]\n"
              "exit 0 when VENDOR_DIR's ops-info json declares every OP_TYPE (what the bindings' available() needs)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    vendor_dir, ops = argv[0], argv[1:]
    info = find_ops_info([vendor_dir], ops)
    if info is None:
        found = sorted(glob.glob(os.path.join(vendor_dir, OPS_INFO_GLOB)))
        print(f"error: no ops-info json under {vendor_dir} declares all of {' '.join(ops)} "
              f"(found: {', '.join(found) or 'none'})", file=sys.stderr)
        return 1
    print(f"ok: {info} declares {' '.join(ops)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
