"""Bad input never crashes the API server: wrong types, nulls, junk, and a seeded mutation run."""

from __future__ import annotations

import copy
import json
import random
import urllib.request
from typing import Any

import pytest

from .conftest import WIDGET_CRD, ServerThread, widget

pytestmark = pytest.mark.timeout(60)


def send(server: ServerThread, method: str, path: str, body: Any = None,
         content_type: str = "application/json", raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": content_type, **server.auth_headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


PODS = "/api/v1/namespaces/default/pods"


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "main", "image": "python:3.11"}], **spec}}


@pytest.mark.parametrize("body,fragment", [
    (pod(containers=5), "cannot unmarshal number into Go struct field spec.containers"),
    (pod(restartPolicy=["Never"]),
     "cannot unmarshal array into Go struct field spec.restartPolicy"),
    (pod(terminationGracePeriodSeconds="30"), "of type int64"),
    ({"metadata": {"name": "p", "labels": {"a": 1}}, "spec": pod()["spec"]},
     "metadata.labels.a of type string"),
    ({"metadata": {"name": "p", "ownerReferences": [{"uid": ["x"]}]}, "spec": pod()["spec"]},
     "metadata.ownerReferences[0].uid"),
    ({"metadata": "p"}, "metadata"),
])
def test_wrong_types_are_400(apiserver: ServerThread, body: dict, fragment: str) -> None:
    code, status = send(apiserver, "POST", PODS, body)
    assert code == 400 and status["kind"] == "Status" and status["reason"] == "BadRequest"
    assert fragment in status["message"]


def test_nulls_mean_unset_and_quantities_become_strings(apiserver: ServerThread) -> None:
    body = pod(nodeSelector=None, volumes=None)
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1, "cpu": 0.5,
                                                             "memory": "1Gi"}}
    body["metadata"]["labels"] = None
    code, created = send(apiserver, "POST", PODS, body)
    assert code == 201, created
    assert "nodeSelector" not in created["spec"] and "labels" not in created["metadata"]
    assert created["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "1", "cpu": "500m", "memory": "1Gi"}


@pytest.mark.parametrize("raw", [b"{", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b"null",
                                 b'"text"', b"k8s\x00\x0a\x02\x0a"])
def test_junk_bodies(apiserver: ServerThread, raw: bytes) -> None:
    for content_type in ("application/json", "application/vnd.kubernetes.protobuf"):
        code, status = send(apiserver, "POST", PODS, raw=raw, content_type=content_type)
        assert 400 <= code < 500 and status["kind"] == "Status", (raw[:20], content_type)
    code, _ = send(apiserver, "GET", "/api/v1/namespaces")
    assert code == 200


SAMPLES: dict[str, dict[str, Any]] = {
    PODS: {"metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["a/b"],
                        "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "n",
                                             "uid": "u"}]},
           "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}],
                                    "ports": [{"containerPort": 1}],
                                    "resources": {"limits": {"cpu": "1"}}}],
                    "volumes": [{"name": "v", "emptyDir": {}}], "nodeName": "n1"}},
    "/api/v1/namespaces/default/secrets": {"metadata": {"name": "s"}, "data": {"a": "YQ=="},
                                           "stringData": {"b": "c"}},
    "/api/v1/namespaces/default/services": {"metadata": {"name": "svc"},
                                            "spec": {"ports": [{"port": 80}]}},
    "/api/v1/namespaces": {"metadata": {"name": "nsf"}},
    "/apis/events.k8s.io/v1/namespaces/default/events": {
        "metadata": {"name": "e"}, "eventTime": "2020-01-01T00:00:00.000000Z",
        "reportingController": "a", "reportingInstance": "b", "action": "c", "type": "Normal"},
    "/apis/example.com/v1/namespaces/default/widgets": widget(
        "w", replicas=1, tags=["a"], containers=[{"name": "x"}], resources={"gpu": 1}),
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions": {
        **copy.deepcopy(WIDGET_CRD), "metadata": {"name": "gadgets.example.com"},
        "spec": {**copy.deepcopy(WIDGET_CRD["spec"]),
                 "names": {"plural": "gadgets", "kind": "Gadget"}}},
}
VALUES: list[Any] = [None, 0, -1, 1.5, "", "x", True, [], [1], {}, {"a": None}, [None],
                     {"$patch": "delete"}]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found.extend(_paths(value, prefix + (key,)))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found.extend(_paths(value, prefix + (index,)))
    return found


def _mutate(rng: random.Random, obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    paths = _paths(obj)[1:]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        target: Any = obj
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = copy.deepcopy(rng.choice(VALUES))
        except (KeyError, IndexError, TypeError):
            pass
    return obj


def test_seeded_mutations_never_get_a_5xx(apiserver: ServerThread) -> None:
    send(apiserver, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    rng = random.Random(20260101)
    verbs = ["POST", "PUT", "PUT /status", "merge", "strategic", "merge /status", "json", "DELETE"]
    codes: dict[int, int] = {}
    for _ in range(400):
        collection, base = rng.choice(list(SAMPLES.items()))
        body = _mutate(rng, base)
        item = f"{collection}/{base['metadata']['name']}"
        verb = rng.choice(verbs)
        if verb == "POST":
            code, _ = send(apiserver, "POST", collection, body)
        elif verb.startswith("PUT"):
            code, _ = send(apiserver, "PUT", item + verb[3:].strip(), body)
        elif verb.startswith(("merge", "strategic")):
            kind, _, sub = verb.partition(" ")
            code, _ = send(apiserver, "PATCH", item + sub, body,
                           f"application/{kind}-merge-patch+json" if kind == "strategic"
                           else "application/merge-patch+json")
        elif verb == "json":
            target = "/" + "/".join(map(str, rng.choice(_paths(base)[1:])))
            code, _ = send(apiserver, "PATCH", item, [{"op": rng.choice(["add", "remove", "test"]),
                                                       "path": target,
                                                       "value": rng.choice(VALUES)}],
                           "application/json-patch+json")
        else:
            code, _ = send(apiserver, "DELETE", item, body)
        codes[code] = codes.get(code, 0) + 1
        assert code < 500, (verb, item, body)
        if rng.random() < 0.3:
            send(apiserver, "POST", collection, base)
    assert sum(n for c, n in codes.items() if c < 300) > 0  # some writes did go through
