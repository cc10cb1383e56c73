"""The micro-benchmarks run on the test suite's builds of the hot path: ``impl``, ``twins`` and one
fixture per hot-path module (``http1``, ``balancer``, ...), from tests/conftest.py, which checks
that the compiled build is really compiled."""
from tests.conftest import *  # noqa: F401,F403  (pytest registers the fixtures it finds here)
