import atexit
import os
import shutil
import tempfile

import pytest

from lockstep_server import Server

# A host cache of this test session's own: clients of a data server started here never find
# a schedule that another run left for the same port.
_CACHE = tempfile.mkdtemp(prefix="lockstep-pytest-cache-")
os.environ["LOCKSTEP_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()
