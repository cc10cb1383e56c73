"""The meshproxy demo mesh (``make demo``, ``python -m demo``): development tooling that lives in
the source tree, outside the meshproxy package and its wheel. The code is in ``demo.mesh``; see
docs/demo.md."""
