"""What a test of real Flower processes needs (tests/test_federation_*.py, test_admin_training)."""

import shutil
import sys

import pytest

from synthpool.coordinator.admin.flower_processes import bin_dir

REAL_FLOWER_PROCESSES = [
    pytest.mark.skipif(sys.platform != "linux", reason="process plumbing reads /proc"),
    pytest.mark.skipif(not (bin_dir() / "flower-superlink").exists()
                       or shutil.which("synthpool-agent", path=str(bin_dir())) is None,
                       reason="flower-superlink / synthpool-agent not installed in this venv"),
]
