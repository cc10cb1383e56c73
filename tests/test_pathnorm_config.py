"""pathNormalization in the Bootstrap (schema, compile, overrides) and in ``meshproxy explain``."""
import textwrap

import pytest

from control import ConfigError, build_snapshot
from meshproxy.explain import explain

SVC = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.31}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: admin}
spec:
  hosts: [admin.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.32}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - name: public
    match: [{uri: {prefix: /public}}]
    route: [{destination: {host: web}}]
  - name: rest
    route: [{destination: {host: admin}}]
---
"""


def config(tmp_path, normalization=None):
    text = SVC
    if normalization is not None:
        text += textwrap.dedent(f"""\
            apiVersion: meshproxy.io/v1alpha1
            kind: Bootstrap
            metadata: {{name: boot}}
            spec:
              pathNormalization: {{normalization: {normalization}}}
            """)
    p = tmp_path / "mesh.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("given,want", [
    (None, "BASE"), ("NONE", "NONE"), ("BASE", "BASE"), ("DEFAULT", "BASE"),
    ("merge_slashes", "MERGE_SLASHES"), ("DECODE_AND_MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"),
])
def test_bootstrap_path_normalization(tmp_path, given, want):
    assert build_snapshot(config(tmp_path, given)).bootstrap.path_normalization == want


def test_bad_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError) as ei:
        build_snapshot(config(tmp_path, "STRICT"))
    assert [str(i) for i in ei.value.issues] == [
        f'{tmp_path}/mesh.yaml: Bootstrap default/boot: spec.pathNormalization.normalization: '
        '"STRICT" is not valid: expected one of DEFAULT, NONE, BASE, MERGE_SLASHES, '
        'DECODE_AND_MERGE_SLASHES']


def test_override_is_checked(tmp_path):
    path = config(tmp_path)
    snap = build_snapshot(path, overrides={"path_normalization": "merge_slashes"})
    assert snap.bootstrap.path_normalization == "MERGE_SLASHES"
    with pytest.raises(ConfigError) as ei:
        build_snapshot(path, overrides={"path_normalization": "STRICT"})
    assert "path_normalization" in str(ei.value) and "STRICT" in str(ei.value)


def test_explain_shows_the_normalised_path(tmp_path):
    lines, s = explain(build_snapshot(config(tmp_path)), "GET", "http://web/public/../admin", [])
    text = "\n".join(lines)
    assert "path /public/../admin -> /admin (pathNormalization BASE)" in [
        " ".join(line.split()) for line in lines], text
    assert s["route"] == "default/web http[1]", text  # not the /public route
    lines, s = explain(build_snapshot(config(tmp_path)), "GET", "http://web/public/%2e%2e/admin",
                       [])
    assert s["route"] == "default/web http[1]"
    assert "path /public/%2e%2e/admin -> /admin (pathNormalization BASE)" in [
        " ".join(line.split()) for line in lines]


def test_explain_with_none_and_unchanged_paths(tmp_path):
    lines, s = explain(build_snapshot(config(tmp_path, "NONE")), "GET",
                       "http://web/public/../admin", [])
    assert s["route"] == "default/web http[0]"
    assert not any(line.startswith("path ") for line in lines)
    lines, s = explain(build_snapshot(config(tmp_path)), "GET", "http://web/public/x", [])
    assert s["route"] == "default/web http[0]"
    assert not any(line.startswith("path ") for line in lines)


def test_explain_merge_and_decode(tmp_path):
    lines, s = explain(build_snapshot(config(tmp_path, "MERGE_SLASHES")), "GET",
                       "http://web//public//x", [])
    assert s["route"] == "default/web http[0]"
    assert "path //public//x -> /public/x (pathNormalization MERGE_SLASHES)" in [
        " ".join(line.split()) for line in lines]
    lines, s = explain(build_snapshot(config(tmp_path, "DECODE_AND_MERGE_SLASHES")), "GET",
                       "http://web/public%2F..%2Fadmin", [])
    assert s["route"] == "default/web http[1]"


def test_explain_path_that_cannot_be_normalised(tmp_path):
    lines, s = explain(build_snapshot(config(tmp_path)), "GET", "http://web/a%00b", [])
    assert s == {"status": 400}
    assert "cannot be normalised" in lines[0]
