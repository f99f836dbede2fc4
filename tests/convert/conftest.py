"""Fixtures for the converter tests: tiny release-format checkpoints made by our writer, and a cache of
conversions of them (each option set is converted once per session)."""
import pytest

from cvt_helpers import make_release


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """(directory, stored float weights) of the tiny release checkpoint shared by read-only tests."""
    d = tmp_path_factory.mktemp("release") / "tiny"
    return str(d), make_release(d)


@pytest.fixture(scope="session")
def converted(release, tmp_path_factory):
    """converted(precision, tp=1, ep=1, workers=1) -> directory (cached per option set)."""
    from ascend_v4.convert import convert_checkpoint
    cache = {}
    root = tmp_path_factory.mktemp("converted")

    def get(precision, tp=1, ep=1, workers=1, layout="ranks", int4_group="32"):
        key = (precision, tp, ep, workers, layout, int4_group)
        if key not in cache:
            d = str(root / f"{precision}_tp{tp}_ep{ep}_k{workers}_{layout}_{int4_group}")
            convert_checkpoint(release[0], d, precision, tp, ep, workers=workers, progress=False, layout=layout,
                               int4_group=int4_group)
            cache[key] = d
        return cache[key]
    return get
