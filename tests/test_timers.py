"""The timing wheel behind the downstream timeouts (meshproxy/_core/timers.py), on both builds."""
import importlib
import os

import pytest


@pytest.fixture(params=["py", "c"])
def timers(request):
    if request.param == "c" and os.environ.get("MESHPROXY_NO_EXTENSIONS"):
        pytest.skip("MESHPROXY_NO_EXTENSIONS is set: compiled build not tested")
    mod = importlib.import_module(
        "meshproxy._core.timers" if request.param == "c" else "meshproxy._py.timers")
    assert mod.__file__.endswith(".so") == (request.param == "c"), mod.__file__
    return mod


class FakeLoop:
    """Just what the wheel uses: time() and call_at(); ``run_until(t)`` fires what is due."""

    def __init__(self, t=1000.0):
        self.t = t
        self.calls = []  # [when, fn, cancelled-flag holder]

    def time(self):
        return self.t

    def call_at(self, when, fn):
        h = Handle(when, fn)
        self.calls.append(h)
        return h

    def run_until(self, t):
        while True:
            due = [h for h in self.calls if not h.cancelled and h.when <= t]
            if not due:
                break
            h = min(due, key=lambda h: h.when)
            self.calls.remove(h)
            self.t = max(self.t, h.when)
            h.fn()
        self.t = t

    def pending(self):
        return [h for h in self.calls if not h.cancelled]


class Handle:
    def __init__(self, when, fn):
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self):
        self.cancelled = True


class Target:
    def __init__(self):
        self.fired = []

    def on_timer(self, now):
        self.fired.append(now)


def test_fires_after_deadline_within_resolution(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 64)
    a, b = Target(), Target()
    ha = w.schedule(1000.55, a)
    w.schedule(1002.0, b)
    assert len(w) == 2 and ha.active()
    loop.run_until(1000.5)
    assert a.fired == []
    loop.run_until(1000.7)
    assert len(a.fired) == 1 and 1000.55 <= a.fired[0] <= 1000.55 + 0.1 + 1e-9
    assert not ha.active() and len(w) == 1
    loop.run_until(1001.99)
    assert b.fired == []
    loop.run_until(1002.2)
    assert len(b.fired) == 1 and 1002.0 <= b.fired[0] <= 1002.1 + 1e-9
    assert w.fired == 2


def test_cancel(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 64)
    t = Target()
    h = w.schedule(1000.3, t)
    h.cancel()
    assert len(w) == 0 and not h.active()
    h.cancel()  # twice is harmless
    loop.run_until(1005)
    assert t.fired == []


def test_one_tick_callback_for_many_timers(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 64)
    targets = [Target() for _ in range(1000)]
    for i, t in enumerate(targets):
        w.schedule(1000.0 + 0.001 * i, t)
    assert len(loop.pending()) == 1  # one loop callback drives them all
    loop.run_until(1001.2)
    assert all(len(t.fired) == 1 for t in targets)
    assert all(t.fired[0] >= 1000.0 + 0.001 * i for i, t in enumerate(targets))


def test_lazy_rearm_later_and_earlier(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 64)
    t = Target()
    h = w.schedule(1000.5, t)
    w.arm(h, 1003.0)  # later: a field write, moved when its slot comes up
    loop.run_until(1002.9)
    assert t.fired == []
    loop.run_until(1003.15)
    assert len(t.fired) == 1 and t.fired[0] >= 1003.0
    w.arm(h, 1010.0)
    w.arm(h, 1003.5)  # earlier: moved now
    loop.run_until(1003.65)
    assert len(t.fired) == 2 and 1003.5 <= t.fired[1] <= 1003.65
    loop.run_until(1011)
    assert len(t.fired) == 2
    w.arm(h, 0)  # disarm
    assert not h.active()


def test_beyond_one_revolution(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 16)  # 1.6 s per revolution
    t = Target()
    w.schedule(1010.0, t)
    for step in range(1, 100):
        loop.run_until(1000.0 + step * 0.1)
    assert t.fired == []
    loop.run_until(1010.15)
    assert len(t.fired) == 1 and t.fired[0] >= 1010.0


def test_late_tick_and_past_deadline(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 16)
    a, b = Target(), Target()
    w.schedule(1000.2, a)
    w.schedule(1001.0, b)
    loop.t = 1005.0  # the loop was blocked for 5 s (several revolutions)
    for h in loop.pending():
        h.fn() if h.when <= loop.t else None
        loop.calls.remove(h)
        break
    assert len(a.fired) == 1 and len(b.fired) == 1
    c = Target()
    w.schedule(900.0, c)  # already past: the next tick
    loop.run_until(1005.2)
    assert len(c.fired) == 1


def test_callback_may_rearm_and_errors_do_not_stop_the_wheel(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 16)

    class Again:
        def __init__(self):
            self.n = 0
            self.h = None

        def on_timer(self, now):
            self.n += 1
            if self.n < 3:
                w.arm(self.h, now + 0.5)

    class Broken:
        def on_timer(self, now):
            raise RuntimeError("boom")

    g = Again()
    g.h = w.schedule(1000.5, g)
    w.schedule(1000.5, Broken())
    ok = Target()
    w.schedule(1000.55, ok)
    loop.run_until(1003)
    assert g.n == 3 and len(ok.fired) == 1


def test_stop_and_start(timers):
    loop = FakeLoop()
    w = timers.TimerWheel(loop, 0.1, 16)
    t = Target()
    w.schedule(1000.3, t)
    w.stop()
    assert loop.pending() == []
    loop.run_until(1001)
    assert t.fired == []
    w.start()
    loop.run_until(1001.2)
    assert len(t.fired) == 1


def test_bad_arguments(timers):
    with pytest.raises(ValueError):
        timers.TimerWheel(FakeLoop(), 0, 16)
