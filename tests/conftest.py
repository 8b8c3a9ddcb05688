import pytest

from fixturetree import FakeHost


@pytest.fixture
def fake_host(tmp_path):
    """An empty fake host tree under tmp_path (see tests/fixturetree.py)."""
    return FakeHost(tmp_path / "host")
