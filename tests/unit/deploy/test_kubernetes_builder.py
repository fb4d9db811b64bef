"""The test-side Kustomize builder (tests/support/kustomize.py) does what Kustomize does
for the features deploy/kubernetes uses, and refuses what it does not implement: the
other Kubernetes tests are only as true as this build."""

from __future__ import annotations

import base64
from pathlib import Path
from textwrap import dedent

import pytest

from support.kustomize import KustomizeError, build, find

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      tolerations:
        - {key: a, operator: Exists}
      containers:
        - name: app
          image: example/web:1.0
          args: ["serve", "--fast"]
          env:
            - {name: A, value: "1"}
            - {name: B, value: "2"}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
        - name: sidecar
          image: example/sidecar
      volumes:
        - {name: tmp, emptyDir: {}}
"""


def _write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
    return directory


def _base(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "base",
        {
            "kustomization.yaml": """\
                resources: [web.yaml]
                namespace: shop
                labels:
                  - pairs: {team: storefront}
                    includeTemplates: true
                images:
                  - {name: example/web, newTag: "2.0"}
                configMapGenerator:
                  - name: settings
                    literals: [MODE=fast, "URL=http://x?a=b"]
                """,
            "web.yaml": DEPLOYMENT,
        },
    )


def test_a_patch_merges_lists_by_their_key_and_replaces_the_others(tmp_path: Path) -> None:
    _base(tmp_path)
    overlay = _write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """\
                resources: [../base]
                patches:
                  - path: web.yaml
                """,
            "web.yaml": """\
                apiVersion: apps/v1
                kind: Deployment
                metadata:
                  name: web
                spec:
                  template:
                    spec:
                      tolerations:
                        - {key: b, operator: Exists}
                      containers:
                        - name: app
                          args: ["serve"]
                          env:
                            - {name: B, value: "20"}
                            - {name: C, value: "3"}
                          volumeMounts:
                            - {name: models, mountPath: /models}
                        - name: sidecar
                          $patch: delete
                      volumes:
                        - {name: models, emptyDir: {}}
                """,
        },
    )
    web = find(build(overlay), "Deployment", "web")
    spec = web["spec"]["template"]["spec"]
    [app] = spec["containers"]
    assert app["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
    ]
    assert app["args"] == ["serve"]
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/tmp", "/models"]
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "models"]
    assert spec["tolerations"] == [{"key": "b", "operator": "Exists"}]
    # The base's own transformations were applied before the overlay's patch.
    assert app["image"] == "example/web:2.0"
    assert web["metadata"]["namespace"] == "shop"
    assert web["spec"]["template"]["metadata"]["labels"] == {"app": "web", "team": "storefront"}
    # Selectors are left alone (changing one would orphan the running pods).
    assert web["spec"]["selector"] == {"matchLabels": {"app": "web"}}


def test_generators_create_merge_and_encode(tmp_path: Path) -> None:
    _base(tmp_path)
    overlay = _write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """\
                resources: [../base]
                configMapGenerator:
                  - name: settings
                    behavior: merge
                    literals: [MODE=slow]
                    files: [rules=rules.txt]
                secretGenerator:
                  - name: creds
                    literals: [password=s3cret=yes]
                """,
            "rules.txt": "allow all\n",
        },
    )
    objects = build(overlay)
    assert find(objects, "ConfigMap", "settings")["data"] == {
        "MODE": "slow",
        "URL": "http://x?a=b",
        "rules": "allow all\n",
    }
    secret = find(objects, "Secret", "creds")
    assert base64.b64decode(secret["data"]["password"]).decode() == "s3cret=yes"


def test_a_delete_patch_removes_the_resource(tmp_path: Path) -> None:
    _base(tmp_path)
    overlay = _write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """\
                resources: [../base]
                patches:
                  - patch: |-
                      $patch: delete
                      apiVersion: apps/v1
                      kind: Deployment
                      metadata:
                        name: web
                """,
        },
    )
    assert [o["kind"] for o in build(overlay)] == ["ConfigMap"]


@pytest.mark.parametrize(
    ("kustomization", "files", "error"),
    [
        ("resources: [../outside.yaml]", {}, "not in or below"),
        ("commonLabels: {a: b}", {}, "unsupported kustomization fields"),
        (
            "resources: [web.yaml]\npatches:\n  - path: p.yaml\n",
            {
                "web.yaml": DEPLOYMENT,
                "p.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
            },
            "matches 0 resources",
        ),
        ("resources: [web.yaml, web.yaml]", {"web.yaml": DEPLOYMENT}, "defined twice"),
        (
            "configMapGenerator:\n  - {name: c, behavior: merge, literals: [A=1]}\n",
            {},
            "does not exist",
        ),
    ],
)
def test_what_kustomize_would_refuse_or_is_not_implemented_raises(
    tmp_path: Path, kustomization: str, files: dict[str, str], error: str
) -> None:
    (tmp_path / "outside.yaml").write_text(DEPLOYMENT)
    directory = _write(tmp_path / "k", {"kustomization.yaml": kustomization, **files})
    with pytest.raises(KustomizeError, match=error):
        build(directory)
