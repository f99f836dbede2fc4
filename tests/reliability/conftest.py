"""The error contract, asserted in-process (click's CliRunner: fast enough for property-based tests).

Contract (docs/reliability.md): a known failure prints exactly one `error: …` line, exits 2 (`compare`/`verify`
exit 1 for data that is readable but out of tolerance or damaged), never a traceback, never leaves partial output
under a final name, and never unpickles anything.
"""
import os
import pickle
import subprocess

import pytest
from click.testing import CliRunner


class PickleLoaded(BaseException):
    """Raised by the tripwires below; BaseException so no `except Exception` in the code under test hides it."""


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    """Any attempt to unpickle during a test fails it."""
    def trip(*a, **k):
        raise PickleLoaded("something tried to unpickle")

    class TripUnpickler(pickle.Unpickler):    # a class: libraries subclass pickle.Unpickler at import time
        def __init__(self, *a, **k):
            trip()
    monkeypatch.setattr(pickle, "load", trip)
    monkeypatch.setattr(pickle, "loads", trip)
    monkeypatch.setattr(pickle, "Unpickler", TripUnpickler)
    yield


def cli(*args):
    from ascend_v4.cli import main
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_contract(r, code=2, fragment=None):
    """Exit `code` with one `error:` line on stderr (code 2) and no traceback. Returns the error line."""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback
        raise AssertionError("uncaught exception:\n" + "".join(traceback.format_exception(r.exception)))
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == code, (r.exit_code, r.output)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    if code == 2:
        assert len(errors) == 1, r.stderr
        others = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("error: ", "warning: "))
                  and not ln.startswith("converting ")]
        assert not others, r.stderr
        if fragment:
            assert fragment in errors[0], errors[0]
        return errors[0]
    return None


def final_names(d):
    """Files under `d` that look finished (no temporary or hidden names)."""
    out = []
    for root, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if not x.startswith(".") and not x.endswith(".tmp")]
        out += [os.path.relpath(os.path.join(root, f), d) for f in files
                if not f.startswith(".") and not f.endswith(".tmp")]
    return sorted(out)


def _can_mount_tmpfs(tmp):
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    d = os.path.join(tmp, "probe")
    os.makedirs(d, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True, text=True)
    if p.returncode:
        return f"mount -t tmpfs refused ({p.stderr.strip()[:80]})"
    subprocess.run(["umount", d], check=True)
    return None


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(kib) -> directory on a real tmpfs of that size (skipped where mounting is not allowed)."""
    why = _can_mount_tmpfs(str(tmp_path))
    if why:
        pytest.skip(f"real small filesystem unavailable: {why}; the injected-ENOSPC tests cover the same paths")
    mounted = []

    def make(kib):
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(d)], check=True)
        mounted.append(str(d))
        return d
    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", d])


@pytest.fixture(scope="session", autouse=True)
def _error_classes_loaded():
    """The CLI imports every error class (some pull in MindSpore, which raises the recursion limit) on the first
    failure; do it once up front so no property's first example pays for it or trips hypothesis' warnings."""
    from ascend_v4.errors import known_errors
    known_errors()
