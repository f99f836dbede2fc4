"""Fixtures of the DeepSeek-V4.1 tests."""
import pytest

RELEASE_SEED = 5     # test_release_v41 rebuilds these weights: random_weights_v41(cfg, 5)


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """A v4.1-tiny release-format directory as `ascend-v4 make-checkpoint` writes it (read-only for the tests)."""
    from click.testing import CliRunner
    from ascend_v4.cli import main
    d = str(tmp_path_factory.mktemp("v41") / "ck")
    r = CliRunner().invoke(main, ["make-checkpoint", d, "--config", "v4.1-tiny", "--seed", str(RELEASE_SEED)])
    assert r.exit_code == 0, r.output
    return d
