"""``python -m demo [--duration SECONDS] [--rate REQ_PER_S]``, from the repository root."""
import sys

from demo.mesh import cli

sys.exit(cli())
