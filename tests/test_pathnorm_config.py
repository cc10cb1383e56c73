"""pathNormalization in the Bootstrap (schema, compile, overrides)."""
import textwrap

import pytest

from control import ConfigError, build_snapshot

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
