"""The smuggling corpus (tests/smuggling_corpus.py) end to end, on both builds.

One sidecar per build in front of a backend that records every byte it receives. Each vector is
sent raw on a fresh connection; the test asserts the status the client gets and exactly what the
backend received: nothing for a refused vector, the canonical form for a forwarded one.
"""
import re
import sys
import time
from pathlib import Path

import pytest
from harness import RawConn, Sidecar, echo_entry
from recording_backend import RecordingBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smuggling_corpus import VECTORS  # noqa: E402

UUID = re.compile(rb"x-request-id: [0-9a-f-]{36}\r\n")


@pytest.fixture(scope="module")
def recorder():
    r = RecordingBackend()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["c", "py"])
def corpus_sidecar(request, recorder, tmp_path_factory):
    s = Sidecar(tmp_path_factory.mktemp("corpus"), request.param, [echo_entry(recorder)],
                name="corpus")
    s.start()
    yield s
    code = s.stop()
    print(f"----- {s.name} ({s.impl}) log -----\n{s.log()}")
    assert code == 0, f"corpus sidecar exited with {code} after SIGTERM"


def _exchange(port, raw):
    c = RawConn("127.0.0.1", port)
    try:
        try:
            c.send(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before everything was sent (limits): a status must still come
        try:
            status, _, body, head = c.read_response()
        except (EOFError, ConnectionResetError):
            return None, b"", b""
        return status, head, body
    finally:
        c.close()


def _received(recorder, want_requests):
    deadline = time.monotonic() + 2.0
    while recorder.stats()["requests"] < want_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    return UUID.sub(b"x-request-id: <id>\r\n", recorder.received())


@pytest.mark.parametrize("v", VECTORS, ids=[v.id for v in VECTORS])
def test_corpus_vector(corpus_sidecar, recorder, v):
    recorder.reset()
    status, head, _ = _exchange(corpus_sidecar.outbound, v.raw)
    assert status == v.status, (status, head[:200])
    if v.forwarded is None:
        assert b"\r\nconnection: close" in head.lower(), head
        time.sleep(0.03)  # anything the sidecar let through has arrived by now
        st = recorder.stats()
        assert recorder.received() == b"", recorder.received()[:300]
        assert st["connections"] == 0, st
    else:
        assert _received(recorder, 1) == v.forwarded


def test_corpus_is_large_enough():
    assert len(VECTORS) >= 60
