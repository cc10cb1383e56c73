"""Unit tests of the benchmark's own tools (no real load): ``pytest bench/test_tools.py``.

The stack collapser and SVG writer of ``profiler.py``, the load generator's percentiles and response
framing, its ``OpenLoop`` outcomes against a small loopback server in a thread (answers, server
closes, timeouts, refused connections, the backlog cap, stop()), and the CI gate logic of
``report.py`` (a gate fails only when both ratios are below).
"""
from __future__ import annotations

import os
import socketserver
import sys
import threading
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from loadgen import IO_ERROR, TIMEOUT, OpenLoop, percentiles, request, response_length  # noqa: E402
from profiler import collapse_perf, flamegraph_svg  # noqa: E402
from report import Row, check_targets  # noqa: E402

PERF_SCRIPT = """\
python 1234 [000] 100.000001:     250000 cpu-clock:
\tffffffff8100 tcp_sendmsg+0x10 ([kernel.kallsyms])
\tffffffff8200 __sys_sendto+0x20 ([kernel.kallsyms])
\t7f0000001000 __pyx_f_9meshproxy_5_core_4conn_write+0x33 (/x/conn.so)
\t7f0000002000 _PyEval_EvalFrameDefault+0x100 (/usr/lib/libpython3.11.so)

python 1234 [000] 100.000002:     250000 cpu-clock:
\t7f0000001000 __pyx_f_9meshproxy_5_core_4conn_write+0x40 (/x/conn.so)
\t7f0000002000 _PyEval_EvalFrameDefault+0x100 (/usr/lib/libpython3.11.so)

python 1234 [001] 100.000003:     250000 cpu-clock:
\t7f0000009000 [unknown] (/x/weird.so)
"""


def test_collapse_perf_folds_root_first():
    stacks = collapse_perf(PERF_SCRIPT.splitlines())
    assert stacks == {
        "python;_PyEval_EvalFrameDefault;__pyx_f_9meshproxy_5_core_4conn_write;"
        "__sys_sendto;tcp_sendmsg": 1,
        "python;_PyEval_EvalFrameDefault;__pyx_f_9meshproxy_5_core_4conn_write": 1,
        "python;[weird.so]": 1,
    }


def test_flamegraph_svg_is_valid_xml_with_every_frame():
    stacks = collapse_perf(PERF_SCRIPT.splitlines())
    svg = flamegraph_svg(stacks, "t <&> title")
    root = ET.fromstring(svg)
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("python (3 samples, 100.0%)") for t in titles)
    assert any(t.startswith("tcp_sendmsg (1 samples") for t in titles)


def test_percentiles_nearest_rank_in_ms():
    p = percentiles([i / 1000.0 for i in range(1, 101)])  # 1..100 ms
    assert p["p50"] == pytest.approx(50.0)
    assert p["p90"] == pytest.approx(90.0)
    assert p["p99"] == pytest.approx(99.0)
    assert p["max"] == pytest.approx(100.0)
    assert percentiles([]) == {}


def test_response_length():
    head = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\n"
    assert response_length(bytearray(head[:-2])) == -1
    assert response_length(bytearray(head + b"hel")) == len(head) + 5
    with pytest.raises(ValueError):
        response_length(bytearray(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))


class _Server(socketserver.ThreadingTCPServer):
    """Keep-alive HTTP/1.1 on loopback: ``/`` answers "ok", ``/close`` answers with Connection:
    close and closes, ``/mute`` never answers."""
    daemon_threads = True
    allow_reuse_address = True

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                target = line.split()[1]
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                if target == b"/mute":
                    continue
                close = target == b"/close"
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
                if close:
                    return

    def __init__(self):
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self):
        self.shutdown()
        self.server_close()


def test_open_loop_reports_every_request_once():
    server = _Server()
    outcomes = {}
    try:
        gen = OpenLoop("127.0.0.1", server.port, [request("h", p) for p in ("/", "/close", "/mute")],
                       50, 8, lambda i, *rest: outcomes.setdefault(i, []).append(rest),
                       timeout=0.3)
        gen.run(0.6, drain=2.0, start_in=0.0)
    finally:
        server.stop()
    assert sorted(outcomes) == list(range(30)) and all(len(v) == 1 for v in outcomes.values())
    for i, [(due, sent, done, head, error)] in outcomes.items():
        assert due <= sent <= done
        if i % 3 == 2:
            assert (head, error) == (None, TIMEOUT) and done - sent >= 0.3
        else:
            assert error is None and head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert (b"Connection: close" in head) == (i % 3 == 1)
    assert gen.skipped == gen.abandoned == 0


def test_open_loop_refused_connections_are_errors_until_stop():
    server = _Server()
    port = server.port
    server.stop()  # nothing listens there any more
    outcomes = []
    gen = OpenLoop("127.0.0.1", port, [request("h")], 200, 2, lambda *o: outcomes.append(o))
    threading.Timer(0.3, gen.stop).start()
    gen.run()  # until stop()
    assert 20 <= len(outcomes) <= 100
    assert all(o[4:] == (None, IO_ERROR) for o in outcomes)
    assert [o[0] for o in outcomes] == list(range(len(outcomes)))


def test_open_loop_backlog_cap_skips_the_oldest():
    server = _Server()
    outcomes = []
    try:
        gen = OpenLoop("127.0.0.1", server.port, [request("h", "/mute")], 1000, 1,
                       lambda *o: outcomes.append(o), max_backlog=10)
        gen.run(0.3, drain=0.2)
    finally:
        server.stop()
    # request 0 went out and got no answer; of the 299 due behind it, all but 10 were skipped
    assert outcomes == [] and gen.abandoned == 1
    assert 280 <= gen.skipped <= 290


def _samples(rps: dict[str, list[float]], conns: int = 50) -> list[dict]:
    out = []
    for name, values in rps.items():
        for rnd, v in enumerate(values, 1):
            out.append({"contender": name, "connections": conns, "round": rnd, "rps": v,
                        "latency_ms": {"p50": 1.0, "p99": 2.0}, "rss_peak_mb": 20.0})
    return out


def _rows(samples: list[dict]) -> list[Row]:
    from report import aggregate
    names = list(dict.fromkeys(s["contender"] for s in samples))
    return aggregate(names, [50], samples, {})


def _gates(checks):
    return {c.text.split(":")[0]: c.status for c in checks if c.gate}


def test_gate_passes_when_paired_ratio_holds_despite_one_bad_round():
    # medians: 20000 / 10500 = 1.90 (< 2), per-round ratios 2.2, 2.1, 1.2 -> median 2.1 (>= 2)
    samples = _samples({"meshproxy": [22000, 20000, 12000], "meshproxy-py": [10000, 9500, 10500],
                        "nginx": [20000, 20000, 20000]})
    gates = _gates(check_targets(_rows(samples), ["meshproxy", "meshproxy-py", "nginx"], [50],
                                 samples))
    assert gates["compiled core >= 2x its pure-Python twin at 50 conns"] == "PASS"
    assert gates["meshproxy >= 0.5x nginx at 50 conns"] == "PASS"


def test_gate_fails_when_both_ratios_are_below():
    samples = _samples({"meshproxy": [15000, 15000, 15000], "meshproxy-py": [10000, 10000, 10000],
                        "nginx": [40000, 40000, 40000]})
    gates = _gates(check_targets(_rows(samples), ["meshproxy", "meshproxy-py", "nginx"], [50],
                                 samples))
    assert gates["compiled core >= 2x its pure-Python twin at 50 conns"] == "FAIL"
    assert gates["meshproxy >= 0.5x nginx at 50 conns"] == "FAIL"


def test_other_contender_missing_is_skip_not_fail():
    samples = _samples({"meshproxy": [15000, 15000]})
    checks = check_targets(_rows(samples), ["meshproxy", "meshproxy-py", "nginx"], [50], samples)
    gates = _gates(checks)
    assert gates["meshproxy started and served the throughput runs"] == "PASS"
    assert not any(c.status == "FAIL" and c.gate for c in checks)
