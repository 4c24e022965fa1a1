import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("D2EXT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $D2EXT_SHARED_DATA); the test is skipped when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set D2EXT_SHARED_DATA)")
    return root


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global random state (Python, NumPy, and torch when a test
    module has imported it), so a test that draws from them gives the same result on every run
    and in any order (a CI failure is then reproducible here)."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def _run_tool(script: str, *args, check: bool = True, timeout: float = 600, env=None):
    """Run ``tools/<script>`` with this interpreter; on failure show its output."""
    cmd = [sys.executable, str(REPO / "tools" / script), *map(str, args)]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def run_tool():
    """``run_tool("train_net.py", "--config-file", ...)`` -> CompletedProcess (raises on failure
    unless ``check=False``)."""
    return _run_tool
