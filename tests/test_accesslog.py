"""Access log: default TEXT line, JSON keys and types, custom formats, errors, file output."""
import json
import logging
import os

import pytest

from meshproxy import accesslog
from meshproxy.accesslog import AccessLog, AccessRecord

# 2026-11-29T07:40:01.123Z
T0 = 1795938001.123456


def sample(**kw):
    fields = dict(
        start_time=T0, method="GET", path="/hello?x=1", protocol="HTTP/1.1", response_code=200,
        response_flags="", response_code_details="via_upstream", connection_termination_details=None,
        upstream_transport_failure_reason=None, bytes_received=0, bytes_sent=12, duration_ms=3,
        upstream_service_time_ms=2, x_forwarded_for=None, user_agent="curl/8.5.0",
        request_id="8d2f1c9e-1111-2222-3333-444455556666", authority="echo.default:80",
        upstream_host="127.0.0.2:8080", upstream_cluster="outbound|80||echo.default.svc.cluster.local",
        upstream_local_address="127.0.0.1:40312", downstream_local_address="127.0.0.1:15001",
        downstream_remote_address="127.0.0.1:52144", requested_server_name=None, route_name="default")
    fields.update(kw)
    return AccessRecord(**fields)


@pytest.fixture
def devnull():
    logs = []
    yield lambda *a, **kw: logs.append(AccessLog(os.devnull, *a, **kw)) or logs[-1]
    for lg in logs:
        lg.close()


def test_default_text_line(devnull):
    line = devnull().format_record(sample())
    assert line == (
        '[2026-11-29T07:40:01.123Z] "GET /hello?x=1 HTTP/1.1" 200 - via_upstream - "-" 0 12 3 2 "-" '
        '"curl/8.5.0" "8d2f1c9e-1111-2222-3333-444455556666" "echo.default:80" "127.0.0.2:8080" '
        'outbound|80||echo.default.svc.cluster.local 127.0.0.1:40312 127.0.0.1:15001 127.0.0.1:52144 '
        '- default\n')


def test_default_text_flagged_and_original_path(devnull):
    headers = {"x-envoy-original-path": "/before-rewrite"}
    rec = sample(response_code=503, response_flags="UF,URX", upstream_service_time_ms=None,
                 response_code_details="upstream_reset_before_response_started{connection_failure}",
                 upstream_transport_failure_reason="delayed connect error: 111",
                 req_headers=headers.get)
    line = devnull().format_record(rec)
    assert line.startswith('[2026-11-29T07:40:01.123Z] "GET /before-rewrite HTTP/1.1" 503 UF,URX '
                           'upstream_reset_before_response_started{connection_failure} - '
                           '"delayed connect error: 111" 0 12 3 - "-"')


def test_empty_record_prints_dashes(devnull):
    assert devnull().format_record(AccessRecord()) == \
        '[-] "- - -" 0 - - - "-" 0 0 0 - "-" "-" "-" "-" "-" - - - - - -\n'


def test_start_time_millis_and_cache():
    assert accesslog._start_time(T0) == "2026-11-29T07:40:01.123Z"
    assert accesslog._start_time(T0 + 0.877) == "2026-11-29T07:40:02.000Z"
    assert accesslog._start_time(0.5 + 86400) == "1970-01-02T00:00:00.500Z"


def test_json_keys_and_types(devnull):
    obj = json.loads(devnull(encoding="JSON").format_record(sample()))
    assert sorted(obj) == sorted([
        "start_time", "method", "path", "protocol", "response_code", "response_flags",
        "response_code_details", "connection_termination_details", "upstream_transport_failure_reason",
        "bytes_received", "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for",
        "user_agent", "request_id", "authority", "upstream_host", "upstream_cluster",
        "upstream_local_address", "downstream_local_address", "downstream_remote_address",
        "requested_server_name", "route_name"])
    assert obj["start_time"] == "2026-11-29T07:40:01.123Z"
    assert obj["response_code"] == 200 and obj["bytes_sent"] == 12 and obj["duration"] == 3
    assert obj["upstream_service_time"] == "2"
    assert obj["response_flags"] == "-"
    assert obj["requested_server_name"] is None and obj["x_forwarded_for"] is None
    assert obj["path"] == "/hello?x=1"


def test_json_one_object_per_line_sorted_keys(devnull):
    line = devnull(encoding="JSON").format_record(sample(user_agent='a "quoted"\nagent'))
    assert line.endswith("\n") and line.count("\n") == 1
    keys = list(json.loads(line))
    assert keys == sorted(keys)
    assert json.loads(line)["user_agent"] == 'a "quoted"\nagent'


def test_custom_json_format(devnull):
    lg = devnull(encoding="JSON", fmt='{"code": "%RESPONSE_CODE%", "who": "%REQ(:AUTHORITY)% via %UPSTREAM_HOST%"}')
    assert json.loads(lg.format_record(sample())) == {"code": 200, "who": "echo.default:80 via 127.0.0.2:8080"}


def test_custom_text_format(devnull):
    headers = {"x-b3-traceid": "abc123"}
    lg = devnull(fmt="%START_TIME(%Y/%m/%d %H:%M:%S.%3f)% %REQ(:METHOD)% %REQ(:PATH):6% "
                     "%REQ(X-B3-TRACEID)% %REQ(X-MISSING?USER-AGENT)% %RESP(CONTENT-TYPE)% "
                     "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%% {done}")
    rec = sample(req_headers=headers.get, resp_headers={"content-type": "text/plain"}.get)
    assert lg.format_record(rec) == \
        "2026/11/29 07:40:01.123 GET /hello abc123 curl/8.5.0 text/plain 127.0.0.1 100% {done}\n"


def test_custom_format_without_header_callables(devnull):
    lg = devnull(fmt="%REQ(X-B3-TRACEID)%|%RESP(CONTENT-TYPE)%\n")
    assert lg.format_record(sample()) == "-|-\n"


def test_header_callable_failure_is_missing(devnull):
    def boom(name):
        raise KeyError(name)
    assert devnull(fmt="%REQ(X-A)%").format_record(sample(req_headers=boom)) == "-\n"


@pytest.mark.parametrize("fmt,needle", [
    ("%FOO%", "unknown command %FOO%"),
    ("abc %REQ(:PATH)", "unterminated"),
    ("%REQ%", "needs a header name"),
    ("%DURATION(x)%", "takes no argument"),
    ("%REQ(a?b?c)%", "NAME?ALTERNATIVE"),
    ("50% off", "invalid or unterminated"),
])
def test_bad_format_rejected(fmt, needle):
    with pytest.raises(ValueError, match="access log format") as exc:
        AccessLog.validate_format(fmt)
    assert needle in str(exc.value)
    with pytest.raises(ValueError):
        AccessLog(os.devnull, fmt=fmt)


def test_bad_encoding_and_json_format():
    with pytest.raises(ValueError, match="TEXT or JSON"):
        AccessLog(os.devnull, encoding="XML")
    with pytest.raises(ValueError, match="JSON"):
        AccessLog.validate_format("not json", "JSON")
    with pytest.raises(ValueError, match="unknown command"):
        AccessLog.validate_format('{"a": "%NOPE%"}', "JSON")
    AccessLog.validate_format(accesslog.DEFAULT_TEXT_FORMAT)


def test_file_output_append_and_flush(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("existing\n")
    lg = AccessLog(str(path))
    lg.log(sample())
    lg.log(sample(response_code=404))
    assert path.read_text() == "existing\n"  # buffered until flush
    assert lg.flush(wait=True)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and " 200 " in lines[1] and " 404 " in lines[2]
    lg.close()
    lg.close()  # idempotent


def test_buffer_flushes_past_64k(tmp_path):
    path = tmp_path / "access.log"
    lg = AccessLog(str(path))
    one = len(lg.format_record(sample()))
    n = accesslog.FLUSH_THRESHOLD // one + 2
    for _ in range(n):
        lg.log(sample())
    assert lg._size < accesslog.FLUSH_THRESHOLD  # handed to the writer by log() itself
    lg.flush(wait=True)
    assert len(path.read_text().splitlines()) == n
    lg.close()


def test_unwritable_file_logs_one_error(tmp_path, caplog):
    path = tmp_path / "no-such-dir" / "access.log"
    lg = AccessLog(str(path))
    with caplog.at_level(logging.ERROR, logger="meshproxy.accesslog"):
        for _ in range(3):
            lg.log(sample())
            lg.flush(wait=True)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "not writable" in errors[0].getMessage()
    assert lg.errors == 3 and lg.dropped_bytes > 0
    lg.close()


def test_stdout(capfd):
    lg = AccessLog("/dev/stdout")
    lg.log(sample())
    lg.close()
    out, _ = capfd.readouterr()
    assert out.startswith('[2026-11-29T07:40:01.123Z] "GET /hello?x=1 HTTP/1.1" 200')
