"""ascend-v4 tooling (installed as ``ascend_v4.tools``): migration analysis and helpers."""
