"""`compare` on inputs that are not .npz dumps: one `error:` line that says what the input is and what to do."""
import numpy as np
from click.testing import CliRunner


def _compare(*args):
    from ascend_v4.cli import main
    return CliRunner().invoke(main, ["compare", *[str(a) for a in args]], catch_exceptions=True)


def _one_error(r):
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.stderr
    return errors[0]


def _dump(path):
    np.savez(path, embed=np.ones((1, 2, 3), np.float32))
    return path


def test_an_msprobe_directory_is_pointed_to_msprobe_compare(tmp_path):
    from ascend_v4.dump import write_msprobe
    ids = np.zeros((1, 2), np.int64)
    write_msprobe(str(tmp_path / "ours"), {"embed": np.ones((1, 2, 3), np.float32)}, ids, n_layers=0)
    line = _one_error(_compare(tmp_path / "ours", _dump(tmp_path / "b.npz")))
    assert "is an msprobe dump directory" in line and "`msprobe compare`" in line
    (tmp_path / "plain").mkdir()
    line = _one_error(_compare(tmp_path / "plain", tmp_path / "b.npz"))
    assert "is a directory; pass the .npz file" in line


def test_a_file_that_is_not_a_zip_is_named_as_such(tmp_path):
    (tmp_path / "t.npz").write_text("hello\n")
    line = _one_error(_compare(tmp_path / "t.npz", _dump(tmp_path / "b.npz")))
    assert line == f"error: {tmp_path / 't.npz'} is not an .npz archive (an .npz dump is a zip file of named " \
                   f"arrays); rerun `ascend-v4 dump`"
    assert "pickled" not in line
