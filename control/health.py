"""Active health checks (meshproxy's ``HealthCheck`` kind), off the hot path, in plain asyncio.

Istio has no API for Envoy-style active health checks (istio/istio#10537); meshproxy's
``HealthCheck`` kind (``meshproxy.io/v1alpha1``, see docs/configuration.md) selects a service (and
optionally a subset or a port) and control compiles it into ``snapshot.HealthCheck`` on each
cluster it selects.

``HealthChecker`` probes a set of ``Target`` s (address, port, check) and reports every change of
a target's health through one callback, ``on_change(target, healthy)``. It knows nothing of the
data plane (control never imports meshproxy): the sidecar's cluster manager turns the callback into
the endpoint's ``H_ACTIVE_HC`` bit. The same checker can run in the control-plane server instead,
one check per endpoint for the whole mesh (rather than Envoy's one check per sidecar per endpoint),
with its results distributed as endpoint health: whoever receives them feeds them into the same
``on_change`` path.

Semantics (Envoy's):

* A target starts healthy (meshproxy divergence: Envoy holds a new host out until its first
  check passes). It turns unhealthy after exactly ``unhealthy_threshold`` consecutive failed
  checks and healthy again after exactly ``healthy_threshold`` consecutive passed checks; a check
  that passes (or fails) resets the other count.
* The first check runs at once; then every ``interval`` plus a random ``0..interval_jitter``, or
  every ``no_traffic_interval`` while ``active(target)`` says the target carries no traffic.
* HTTP: ``GET path`` on a new connection (``Connection: close``), ``Host`` from the check or the
  target's ``host``; it passes when the status is within one of ``expected_statuses``
  (``[start, end)``). TCP: connect, write ``send`` if set, and when ``expect`` is set it passes
  once that text has arrived. A check that has not finished within ``timeout`` fails.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from control.snapshot import HealthCheck

log = logging.getLogger("meshproxy.health")

USER_AGENT = b"meshproxy-health-checker"
MAX_REPLY = 64 * 1024


@dataclass(frozen=True)
class Target:
    """One thing to check: ``address:port`` with ``check``; ``host`` is the default Host header."""

    address: str
    port: int
    check: HealthCheck
    host: str = ""


class TargetState:
    __slots__ = ("healthy", "successes", "failures", "checks", "last_error", "task")

    def __init__(self):
        self.healthy = True
        self.successes = 0
        self.failures = 0
        self.checks = 0
        self.last_error = ""
        self.task: Optional[asyncio.Task] = None


class CheckFailed(Exception):
    pass


class HealthChecker:
    """Probes targets and calls ``on_change(target, healthy)`` when one's health changes.

    Args:
        on_change: called on the event loop with the target and its new health.
        active: ``active(target) -> bool``; False: the target has carried no traffic yet, so it is
            checked every ``no_traffic_interval``. None: always active.
        rand: ``rand() -> float in [0, 1)`` for the interval jitter (tests pass a fixed one).
    """

    def __init__(self, on_change: Callable[[Target, bool], None], *,
                 active: Optional[Callable[[Target], bool]] = None,
                 rand: Callable[[], float] = random.random):
        self.on_change = on_change
        self.active = active
        self.rand = rand
        self.targets: dict = {}  # Target -> TargetState
        self.closed = False

    # -- the target set ----------------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Check exactly ``targets`` from now on: new ones start (healthy), gone ones stop; a
        target that stays keeps its state and its schedule. Call on the event loop."""
        want = set(targets)
        for t in [t for t in self.targets if t not in want]:
            st = self.targets.pop(t)
            if st.task is not None:
                st.task.cancel()
        loop = asyncio.get_running_loop()
        for t in want:
            if t not in self.targets:
                st = self.targets[t] = TargetState()
                st.task = loop.create_task(self._run(t, st))

    def healthy(self, target: Target) -> bool:
        st = self.targets.get(target)
        return True if st is None else st.healthy

    def close(self) -> None:
        self.closed = True
        for st in self.targets.values():
            if st.task is not None:
                st.task.cancel()
        self.targets.clear()

    # -- one target ----------------------------------------------------------------------------

    def _next_interval(self, t: Target) -> float:
        c = t.check
        if self.active is not None and not self.active(t):
            return c.no_traffic_interval
        return c.interval + (c.interval_jitter * self.rand() if c.interval_jitter else 0.0)

    async def _run(self, t: Target, st: TargetState) -> None:
        try:
            while not self.closed:
                ok = await self.check_once(t, st)
                self.record(t, st, ok)
                await asyncio.sleep(self._next_interval(t))
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a checker bug must never reach the data plane
            log.exception("health check of %s:%d stopped", t.address, t.port)

    def record(self, t: Target, st: TargetState, ok: bool) -> None:
        """Count one result; report a change after exactly the threshold."""
        st.checks += 1
        if ok:
            st.failures = 0
            st.successes += 1
            if not st.healthy and st.successes >= t.check.healthy_threshold:
                st.healthy = True
                log.info("health check: %s:%d healthy after %d passed checks", t.address, t.port,
                         st.successes)
                self.on_change(t, True)
        else:
            st.successes = 0
            st.failures += 1
            if st.healthy and st.failures >= t.check.unhealthy_threshold:
                st.healthy = False
                log.warning("health check: %s:%d unhealthy after %d failed checks (%s)",
                            t.address, t.port, st.failures, st.last_error)
                self.on_change(t, False)

    async def check_once(self, t: Target, st: Optional[TargetState] = None) -> bool:
        """One check; True when it passed."""
        writer = None
        try:
            async def probe():
                nonlocal writer
                reader, writer = await asyncio.open_connection(t.address, t.port)
                if t.check.tcp:
                    await _tcp(t.check, reader, writer)
                else:
                    await _http(t, reader, writer)

            await asyncio.wait_for(probe(), t.check.timeout)
            return True
        except asyncio.TimeoutError:
            why = f"timed out after {t.check.timeout:g}s"
        except (OSError, CheckFailed, ValueError, asyncio.IncompleteReadError) as e:
            why = str(e) or type(e).__name__
        finally:
            if writer is not None:
                writer.close()
        if st is not None:
            st.last_error = why
        return False


async def _http(t: Target, reader, writer) -> None:
    c = t.check
    host = c.http_host or t.host or t.address
    head = [b"GET " + c.http_path.encode("latin-1") + b" HTTP/1.1",
            b"Host: " + host.encode("latin-1"), b"User-Agent: " + USER_AGENT,
            b"Connection: close"]
    head += [k.encode("latin-1") + b": " + v.encode("latin-1") for k, v in c.request_headers]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n")
    line = await reader.readline()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise CheckFailed(f"not an HTTP response: {line[:60]!r}")
    status = int(parts[1])
    if not any(lo <= status < hi for lo, hi in c.expected_statuses):
        raise CheckFailed(f"status {status}")


async def _tcp(c: HealthCheck, reader, writer) -> None:
    if c.send:
        writer.write(c.send.encode())
        await writer.drain()
    if c.expect:
        want = c.expect.encode()
        got = b""
        while want not in got:
            data = await reader.read(4096)
            if not data:
                raise CheckFailed("connection closed before the expected reply")
            got = (got + data)[-MAX_REPLY:]
