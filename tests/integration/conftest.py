"""Integration harness: real ``meshproxy run`` processes in front of a real backend process.

Fixtures:
    backend       the echo backend (tests/integration/backend.py), one per session, counters
                  reset for each test that asks for ``echo``
    echo          ``backend`` with its counters zeroed
    impl          "c" (compiled core) or "py" (``MESHPROXY_NO_EXTENSIONS=1``); tests that take a
                  sidecar run on both unless they parametrize ``impl`` themselves
    make_sidecar  factory: ``make_sidecar(docs=None, args=(), boot=None, host=..., workload=...)``
                  writes the YAML config (a Bootstrap with free ports + ``docs``) and starts the
                  process; each one is stopped with SIGTERM at teardown and must exit 0
    sidecar       ``make_sidecar()`` with one ServiceEntry echo.default.svc.cluster.local:80 ->
                  the backend

Each sidecar's stderr goes to a file and is printed at teardown (pytest shows it on failure).
"""
import pytest

from harness import Backend, Sidecar, echo_entry  # noqa: F401


@pytest.fixture(scope="session")
def backend():
    b = Backend()
    yield b
    b.stop()


@pytest.fixture
def echo(backend):
    backend.reset()
    return backend


@pytest.fixture(params=["c", "py"])
def impl(request):
    return request.param


@pytest.fixture
def make_sidecar(impl, tmp_path, request):
    made = []

    def make(docs=None, args=(), start=True, **kw):
        if docs is None:
            b = request.getfixturevalue("backend")
            docs = [echo_entry(b)]
        kw.setdefault("name", f"sidecar{len(made)}")
        s = Sidecar(tmp_path, kw.pop("impl", impl), docs, args=args, **kw)
        made.append(s)
        if start:
            s.start()
        return s

    yield make
    codes = []
    for s in made:
        codes.append((s.name, s.stop()))
        print(f"----- {s.name} ({s.impl}) log -----\n{s.log()}")
    for name, code in codes:
        assert code in (0, None), f"{name} exited with {code} after SIGTERM"


@pytest.fixture
def sidecar(make_sidecar, echo):
    return make_sidecar()


@pytest.fixture(scope="module", params=["c", "py"])
def shared_sidecar(request, backend, tmp_path_factory):
    """One sidecar (per impl) for a whole module of independent requests (e.g. the smuggling
    vectors): saves a process start per test. Its upstream pool persists between tests."""
    s = Sidecar(tmp_path_factory.mktemp("shared"), request.param, [echo_entry(backend)],
                name="shared")
    s.start()
    yield s
    code = s.stop()
    print(f"----- {s.name} ({s.impl}) log -----\n{s.log()}")
    assert code == 0, f"shared sidecar exited with {code} after SIGTERM"
