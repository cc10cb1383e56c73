"""Load-balancer pickers, pure Python twin of meshproxy/_core/balancer.pyx (contract: balancer.pyi)."""


class RoundRobinPicker:
    """Smooth weighted round robin (as nginx's): with equal weights, plain rotation."""

    __slots__ = ("_n", "_weight", "_current", "_total", "_next", "_uniform")

    def __init__(self, weights):
        self._n = len(weights)
        if self._n == 0:
            raise ValueError("a picker needs at least one endpoint")
        self._weight = [int(w) for w in weights]
        if any(w <= 0 for w in self._weight):
            raise ValueError("endpoint weights must be positive")
        self._current = [0] * self._n
        self._total = sum(self._weight)
        self._uniform = all(w == self._weight[0] for w in self._weight)
        self._next = 0

    @property
    def size(self):
        return self._n

    def pick(self):
        if self._uniform:
            i = self._next
            self._next = i + 1 if i + 1 < self._n else 0
            return i
        current = self._current
        weight = self._weight
        best = 0
        for i in range(self._n):
            current[i] += weight[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best
