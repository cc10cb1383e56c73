"""Coarse timers: one hashed timing wheel per event loop, for every timeout of the data plane.

One source, two builds: Cython compiles this file with ``timers.pxd``; ``meshproxy._py.timers`` is
the same file uncompiled. Keep it plain Python.

Theory of operation
-------------------
A ``TimerWheel`` is a ring of ``slots`` sets; slot ``i`` holds the timers due at a tick ``t`` with
``t % slots == i``, a tick being ``resolution`` seconds (default 100 ms) of ``loop.time()``. One
``loop.call_at`` per tick (not one per timer) runs ``_tick``, which empties the slots whose ticks
have passed and calls ``target.on_timer(now)`` for each timer whose deadline has come.

* insert and cancel are O(1) (a set add / discard);
* a timer fires between its deadline and its deadline + resolution (+ event-loop lag); it never
  fires early;
* re-arming a timer to a *later* deadline while it sits in a slot is one field write: when its
  old slot comes up, the wheel sees a deadline still in the future and moves it (lazy re-arming).
  This is what makes per-request timers nearly free: a connection keeps one ``Timer`` for its
  life and pushes its deadline forward; only moving a deadline *earlier* touches the slots;
* a deadline beyond one revolution (``slots * resolution``, 51.2 s by default) is parked in the
  last slot of the revolution and moved again when that slot comes up (one set operation per
  timer per revolution: an hour-long idle timeout costs ~70 moves);
* ``now`` is the loop time of the last tick: callers that can afford a deadline up to one
  resolution early (long timeouts re-armed per request) read it instead of ``loop.time()``.

Usage: ``h = wheel.schedule(loop.time() + 5.0, obj)`` (``obj.on_timer(now)`` is called at the
deadline), ``h.cancel()``; or keep a handle and ``wheel.arm(h, deadline)`` again and again.
"""

RESOLUTION = 0.1  # seconds per tick
SLOTS = 512  # ticks per revolution


class Timer:
    """A timer handle: a deadline (0 = not armed) and the object told when it comes."""

    def __init__(self, wheel, target):
        self.wheel = wheel
        self.target = target
        self.deadline = 0.0
        self.due = -1  # the tick whose slot holds this timer, -1 when in none

    def cancel(self):
        """Disarm (O(1)); the target is not called."""
        self.deadline = 0.0
        if self.due >= 0:
            self.wheel._remove(self)

    def active(self):
        return self.deadline > 0.0


class TimerWheel:
    """A hashed timing wheel driven by one ``loop.call_at`` per tick (see the module doc)."""

    def __init__(self, loop, resolution=RESOLUTION, slots=SLOTS):
        if resolution <= 0 or slots < 2:
            raise ValueError("resolution must be > 0 and slots >= 2")
        self.loop = loop
        self.resolution = resolution
        self.nslots = slots
        self.slots = [set() for _ in range(slots)]
        self.now = loop.time()
        self.tick_no = int(self.now / resolution)  # the last tick processed
        self.count = 0
        self.fired = 0
        self.handle = None
        self.stopped = False

    def start(self):
        """Tick from now on (also started by the first schedule)."""
        self.stopped = False
        if self.handle is None:
            # (the first tick catches up with the slots passed while stopped)
            self.now = self.loop.time()
            self.handle = self.loop.call_at((self.tick_no + 1) * self.resolution, self._tick)

    def stop(self):
        """Stop ticking (pending timers stay, and fire once ticking starts again)."""
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def schedule(self, deadline, target):
        """A new ``Timer`` calling ``target.on_timer(now)`` at ``deadline`` (loop time)."""
        t = Timer(self, target)
        self.arm(t, deadline)
        return t

    def arm(self, t, deadline):
        """(Re)arm ``t`` for ``deadline``; 0 or less disarms it."""
        if deadline <= 0.0:
            t.cancel()
            return
        t.deadline = deadline
        if t.due >= 0:
            if deadline >= t.due * self.resolution:
                return  # later than its slot: moved when the slot comes up
            self._remove(t)
        self._insert(t)

    def _insert(self, t):
        due = int(t.deadline / self.resolution)
        if due * self.resolution < t.deadline:
            due += 1
        if due <= self.tick_no:
            due = self.tick_no + 1
        elif due > self.tick_no + self.nslots:
            due = self.tick_no + self.nslots
        t.due = due
        self.slots[due % self.nslots].add(t)
        self.count += 1
        if self.handle is None and not self.stopped:
            self.start()

    def _remove(self, t):
        self.slots[t.due % self.nslots].discard(t)
        t.due = -1
        self.count -= 1

    def _tick(self):
        self.handle = None
        now = self.loop.time()
        self.now = now
        target = int(now / self.resolution)
        n = target - self.tick_no
        if n > self.nslots:
            n = self.nslots
        due = None
        i = 1
        while i <= n:
            slot = self.slots[(self.tick_no + i) % self.nslots]
            if slot:
                if due is None:
                    due = list(slot)
                else:
                    due.extend(slot)
                slot.clear()
            i += 1
        if target > self.tick_no:
            self.tick_no = target
        if due is not None:
            self.count -= len(due)
            for t in due:
                t.due = -1
            for t in due:
                if t.due >= 0 or t.deadline <= 0.0:
                    continue  # re-armed by an earlier callback, or cancelled
                if t.deadline <= now:
                    t.deadline = 0.0
                    self.fired += 1
                    try:
                        t.target.on_timer(now)
                    except Exception:  # noqa: BLE001 - one broken target must not stop the wheel
                        import logging
                        logging.getLogger("meshproxy").exception("timer callback failed")
                else:
                    self._insert(t)
        if not self.stopped:
            self.handle = self.loop.call_at((self.tick_no + 1) * self.resolution, self._tick)

    def __len__(self):
        return self.count
