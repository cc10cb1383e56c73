"""Load-balancer pickers (contract of meshproxy/_core/balancer.pyx and meshproxy/_py/balancer.py)."""
from typing import Sequence


class RoundRobinPicker:
    """Smooth weighted round robin over ``len(weights)`` endpoints (nginx's algorithm).

    Built when membership or weights change, read per pick. With equal weights it rotates
    0, 1, ..., n-1, 0, ...; with unequal weights each endpoint gets ``weight / sum(weights)`` of the
    picks, interleaved smoothly (never a burst of one endpoint when others are due).

    Raises:
        ValueError: no endpoints, or a weight that is not positive.
    """

    size: int

    def __init__(self, weights: Sequence[int]) -> None: ...

    def pick(self) -> int:
        """Index of the next endpoint."""
