"""Test helper: a training run directory that resumes from another run's checkpoint."""
import os
import shutil


def fork_run(src_dir, step: int, dst_dir) -> None:
    """dst_dir (new) holds src_dir's checkpoint of `step` and its tokenizer, with `latest` naming that checkpoint:
    a Trainer on dst_dir resumes there."""
    name = f"ckpt-{step:08d}"
    os.makedirs(dst_dir)
    shutil.copytree(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    shutil.copytree(os.path.join(src_dir, "tokenizer"), os.path.join(dst_dir, "tokenizer"))
    with open(os.path.join(dst_dir, "latest"), "w") as fh:
        fh.write(name + "\n")
