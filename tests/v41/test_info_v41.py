"""`ascend-v4 info v4.1-flash` reproduces the release's numbers from the config alone."""
import json
import math
import subprocess
import sys

from ascend_v4.config import V41_PRESETS
from ascend_v4.info import v41_kv_bytes_per_token, v41_parameter_counts, v41_release_inventory

# Published figures of the DeepSeek-V4.1-Flash release (HF revision dba1be0a), copied by hand from the V4.1
# model description: the safetensors index's total_size and tensor count, an audit's per-group totals, the tech
# report's KV bytes per token and its quoted parameter split (552B backbone + 196B Engram, ~16B active in decode).
RELEASE_TOTAL_SIZE = 510_286_023_000
RELEASE_TENSORS = 96_085
ROUTED_EXPERTS = (92_160, 288_777_830_400)           # tensors, bytes
DSPARK_EXPERTS = (2_304, 7_219_445_760)
ENGRAM = (12, 203_073_076_240)
VISION = (263, 970_506_240)
BYTES_PER_EXPERT = 18_800_640
KV_BYTES_PER_TOKEN = 890
WINDOW_RING_BYTES = 43 * 128 * (512 + 16)
SIZES = {"F32": 4, "BF16": 2, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1}


def _group(inv, pred):
    names = [n for n in inv if pred(n)]
    return len(names), sum(math.prod(inv[n][0]) * SIZES[inv[n][1]] for n in names)


def test_inventory_reproduces_the_release_totals():
    inv = v41_release_inventory(V41_PRESETS["v4.1-flash"])
    assert len(inv) == RELEASE_TENSORS
    assert sum(math.prod(s) * SIZES[d] for s, d in inv.values()) == RELEASE_TOTAL_SIZE
    assert _group(inv, lambda n: n.startswith("layers.") and ".ffn.experts." in n) == ROUTED_EXPERTS
    assert _group(inv, lambda n: n.startswith("mtp.") and ".ffn.experts." in n) == DSPARK_EXPERTS
    assert _group(inv, lambda n: ".engram." in n) == ENGRAM
    assert _group(inv, lambda n: n.startswith(("vision.", "aligner."))) == VISION
    assert _group(inv, lambda n: n.startswith("layers.0.ffn.experts.0."))[1] == BYTES_PER_EXPERT
    # spot shapes quoted from the release headers
    assert inv["layers.0.ffn.experts.0.w1.weight"] == ((2304, 2560), "I8")
    assert inv["layers.0.ffn.experts.0.w1.scale"] == ((2304, 160), "F8_E8M0")
    assert inv["layers.0.attn.wkv.scale"] == ((16, 160), "F8_E8M0")
    assert inv["layers.14.engram.wkv.scale"] == ((800, 192), "F8_E8M0")
    assert "layers.20.attn.compressor.wgate.weight" not in inv and "layers.14.attn.compressor.wgate.weight" in inv


def test_parameter_split_and_kv_bytes():
    p = v41_parameter_counts(V41_PRESETS["v4.1-flash"])
    assert p["release_bytes"] == RELEASE_TOTAL_SIZE and p["tensors"] == RELEASE_TENSORS
    assert round(p["backbone"] / 1e9) == 552 and 196e9 <= p["engram"] < 197e9
    assert p["engram"] == (384006168 + 384016682) * 256 + 2 * (25600 * 6144 + 2 * 4 * 5120)
    assert round(p["active_per_token"] / 1e9) == 16
    kv = v41_kv_bytes_per_token(V41_PRESETS["v4.1-flash"])
    assert kv["release"] == KV_BYTES_PER_TOKEN and kv["window_bytes_fp8"] == WINDOW_RING_BYTES


def test_info_cli_prints_and_json():
    run = lambda *a: subprocess.run([sys.executable, "-m", "ascend_v4.cli", "info", *a], capture_output=True,
                                    text=True, env={"GLOG_v": "3", "PATH": ""})
    p = run("v4.1-flash")
    assert p.returncode == 0, p.stderr
    assert "510,286,023,000 bytes" in p.stdout and "890 B" in p.stdout and "96,085 tensors" in p.stdout
    assert "serving cache (generate --kv-format) per token: reference 890 B, int8 2580 B, float32 6400 B" in p.stdout
    d = json.loads(run("v4.1-tiny", "--json").stdout)
    assert d["version"] == "v4.1" and d["params"]["tensors"] == len(v41_release_inventory(V41_PRESETS["v4.1-tiny"]))
