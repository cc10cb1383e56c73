"""Process-wide switches read once at import time."""
import os

#: ``MESHPROXY_NO_EXTENSIONS=1`` selects the pure-Python twins of every ``meshproxy._core`` module.
NO_EXTENSIONS = bool(os.environ.get("MESHPROXY_NO_EXTENSIONS"))
