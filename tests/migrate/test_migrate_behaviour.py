"""--apply never changes behaviour: small CUDA programs and their migrated copies make the same decisions.

Each program runs as written on a simulated CUDA host and, after `migrate scan --apply`, on a simulated
Ascend host with a recording `torch_npu` stub (tests/migrate/hostsim). Both logs of device decisions
(set_device, bf16 support, autocast device/dtype/enabled, GradScaler on/off, backend, synchronize,
device strings of every factory and `.to`) must be identical once CUDA names are spelled as their NPU
counterparts, and the programs' outputs (losses, generated tokens) must be bit-identical.
"""
import json
import os
import subprocess
import sys

import pytest

from ascend_v4.tools.migrate import apply_rewrites, load_rules, scan_path

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "hostsim", "run.py")


def _run(host, program, args, tmp_path, tag):
    log = tmp_path / f"{tag}.log.json"
    env = {**os.environ, "GLOG_v": "3", "INIT_METHOD": f"file://{tmp_path / (tag + '.store')}",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, RUN, host, str(log), program, *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{host} run of {program} failed:\n{proc.stderr[-3000:]}"
    return json.loads(log.read_text())


def _as_npu(obj):
    """Spell a CUDA-host record the way the Ascend host spells it."""
    return json.loads(json.dumps(obj).replace("cuda", "npu").replace("nccl", "hccl"))


def _migrate(src_dir, tmp_path):
    result = scan_path(src_dir, load_rules(), keep_sources=True)
    out = tmp_path / "migrated"
    apply_rewrites(result, src_dir, str(out))
    return out, result


@pytest.mark.parametrize("name, entry, out_flag", [("trainer", "train.py", "--out"), ("server", "server.py", None)])
def test_migrated_program_behaves_identically(name, entry, out_flag, tmp_path):
    src = os.path.join(HERE, "programs", name)
    migrated, result = _migrate(src, tmp_path)
    assert result.left == [], [x.to_dict() for x in result.left]
    text = (migrated / entry).read_text()
    assert "import torch_npu" in text
    outs = {}
    logs = {}
    for host, prog in (("cuda", os.path.join(src, entry)), ("npu", str(migrated / entry))):
        out = tmp_path / f"{host}.out.json"
        args = [out_flag, str(out)] if out_flag else [str(out)]
        logs[host] = _run(host, prog, args, tmp_path, host)
        outs[host] = json.loads(out.read_text())
    assert logs["npu"]["log"], "nothing was recorded: the simulation is not wired"
    assert logs["npu"] == _as_npu(logs["cuda"])
    assert outs["npu"] == _as_npu(outs["cuda"])


def test_half_migration_is_caught_by_the_simulation(tmp_path):
    """The harness itself must see the issue's failure: leave GradScaler and is_bf16_supported as CUDA and
    the Ascend run decides differently (fp16 chosen, no loss scaling)."""
    src = os.path.join(HERE, "programs", "trainer")
    migrated, _ = _migrate(src, tmp_path)
    path = migrated / "train.py"
    text = path.read_text()
    broken = (text.replace("torch.npu.is_bf16_supported()", "torch.cuda.is_bf16_supported()")
              .replace("torch.npu.amp.GradScaler()", "torch.cuda.amp.GradScaler()"))
    assert broken != text
    path.write_text(broken)
    cuda_log = _run("cuda", os.path.join(src, "train.py"), ["--out", str(tmp_path / "a.json")], tmp_path, "c")
    npu_log = _run("npu", str(path), ["--out", str(tmp_path / "b.json")], tmp_path, "n")
    assert npu_log != _as_npu(cuda_log)
    autocasts = [e for e in npu_log["log"] if e[0] == "torch.autocast"]
    assert autocasts and autocasts[0][2] == "torch.float16"  # bf16 support not seen on the NPU host
    assert not any(e[0].endswith("GradScaler") for e in npu_log["log"])  # the real one disabled itself
