"""Value contracts of stored tensors: what a tensor's values must satisfy beyond its dtype and shape.

- `*.tid2eid` (hash-routing table, int64 [vocab, top-k]): every id names a routed expert, 0 <= id < n_routed_experts;
- F8_E8M0 block scales (the release's FP8/MXFP4 scales): every code is a finite power of two, i.e. not 0xFF (NaN);
- F32 per-channel scales of converted int8/int4 weights (`*_scale`): finite and > 0.

Checked by the loaders (so a graph never runs with wrong routing) and by `ascend-v4 verify` (docs/reliability.md).
Floating weights must also be finite; the loaders check that after decoding.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

E8M0_NAN = 0xFF


def has_contract(name: str, dtype: str) -> bool:
    return name.endswith(".tid2eid") or dtype == "F8_E8M0" or (dtype == "F32" and name.endswith("_scale"))


def value_problem(name: str, dtype: str, raw: np.ndarray, n_routed_experts: int) -> Optional[str]:
    """One line naming the tensor and what is wrong with its values, or None when the contract holds (or the
    entry has none). `raw` is the stored array (uint8 codes for F8_*)."""
    a = np.asarray(raw)
    if name.endswith(".tid2eid"):
        if a.dtype.kind not in "iu":
            return f"tensor '{name}' holds {a.dtype} values; expert ids must be integers"
        if a.size and (int(a.min()) < 0 or int(a.max()) >= n_routed_experts):
            bad = int(np.count_nonzero((a < 0) | (a >= n_routed_experts)))
            return (f"tensor '{name}' has {bad} expert ids outside [0, {n_routed_experts}) (values span "
                    f"[{int(a.min())}, {int(a.max())}]); the hash-routing table is corrupt or belongs to another config")
    elif dtype == "F8_E8M0":
        bad = int(np.count_nonzero(a.view(np.uint8) == E8M0_NAN))
        if bad:
            return (f"scale '{name}' has {bad} NaN codes (0xFF); E8M0 scales must be finite powers of two - the "
                    f"file is corrupt")
    elif dtype == "F32" and name.endswith("_scale"):
        f = a.astype(np.float32, copy=False)
        bad = int(np.count_nonzero(~(np.isfinite(f) & (f > 0))))
        if bad:
            return f"scale '{name}' has {bad} values that are not finite and > 0; the file is corrupt"
    return None
