"""docs/examples/custom_filter.py runs as documented on both builds: a user-written filter that
answers locally, stops and resumes the stream asynchronously, and edits both heads."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("build", ["c", "py"])
def test_custom_filter_example(build):
    env = {k: v for k, v in os.environ.items() if k != "MESHPROXY_NO_EXTENSIONS"}
    if build == "py":
        env["MESHPROXY_NO_EXTENSIONS"] = "1"
    r = subprocess.run([sys.executable, str(ROOT / "docs/examples/custom_filter.py")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    assert lines[0].startswith("{'x-tenant': 'acme'}: 200 'origin saw: X-Tenant: acme; "
                               "x-tenant-checked: yes'")
    assert lines[1] == "no tenant: 403 'x-tenant required' (x-tenant-time-ms: None)"
    assert "x-tenant-checked: yes" in lines[2]
    # the asynchronous check (50 ms) is inside the time the filter measured
    for line in (lines[0], lines[2]):
        ms = float(re.search(r"x-tenant-time-ms: ([0-9.]+)", line).group(1))
        assert 45.0 <= ms < 2000.0, line
