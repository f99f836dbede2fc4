"""The project documents itself: no source or doc file cites a document outside the repository.

Code and docs cite docs/… (or the official reference's function names). Forbidden: "spec §…", a section sign in
code at all, a section sign in a Markdown file that names no numbered heading of that file, the external notes'
file names, and absolute paths into the machine's shared or other trees."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = (".py", ".cc", ".cpp", ".h", ".hpp", ".sh", ".txt", ".cfg", ".ini", ".toml", ".yaml", ".yml")
DOCS = (".md",)
EXTERNAL = re.compile(r"spec\s*§|gotcha\s*\d|shared notes|ascend-ecosystem|mindspore-2\.10-cpu|ascendc-real-headers\.md"
                      r"|spec/deepseek|/work/(?!\.mirror)\w")


def _tracked():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p.endswith(CODE + DOCS) and os.path.isfile(os.path.join(ROOT, p))]


def _md_sections(text):
    """Numbers of this file's numbered headings ('## 3. Value contracts' -> '3')."""
    return set(re.findall(r"^#+\s+(\d+(?:\.\d+)*)\.?\s", text, re.M))


def find_external_citations(files):
    bad = []
    for rel in files:
        with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        own = _md_sections(text) if rel.endswith(DOCS) else set()
        for n, line in enumerate(text.splitlines(), 1):
            if EXTERNAL.search(line):
                bad.append(f"{rel}:{n}: {line.strip()[:120]}")
                continue
            for sec in re.findall(r"§\s*(\d+(?:\.\d+)*)", line):
                if sec not in own:           # code: own is empty, so every § is an outside citation
                    bad.append(f"{rel}:{n}: §{sec} is not a section of this file: {line.strip()[:100]}")
    return bad


def test_no_file_cites_a_document_outside_the_repository():
    files = [f for f in _tracked() if f != "tests/test_citations.py"]      # this file spells the forms out
    assert len(files) > 200 and "README.md" in files and "ascend_v4/model.py" in files    # the scan saw the tree
    bad = find_external_citations(files)
    assert not bad, "cite docs/… or the official reference's function names instead:\n" + "\n".join(bad)


@pytest.mark.parametrize("line,flagged", [
    ("# the KV layout (spec §11)", True),
    ("see gotcha 4 of the notes", True),
    ('"""Muon (§10)."""', True),
    ("transformers in /work/venv", True),
    ("see the shared notes §5", True),
    ("mirrors under /work/.mirror by default", False),
    ("Muon groups: docs/training.md", False),
    ("the reference's hc_split_sinkhorn", False),
])
def test_the_scan_flags_outside_citations(tmp_path, monkeypatch, line, flagged):
    """The scan itself: each forbidden form is caught, a citation of our own docs is not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "a.py").write_text(line + "\n")
    assert bool(find_external_citations(["a.py"])) == flagged


def test_markdown_may_cite_its_own_numbered_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "d.md").write_text("# T\n## 3. Values\ntext\n## 4. More\nas §3 says; unlike §7.\n")
    bad = find_external_citations(["d.md"])
    assert len(bad) == 1 and "§7" in bad[0]
