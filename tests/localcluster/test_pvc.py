"""PersistentVolumeClaims on the local cluster, end to end over HTTPS with the admin kubeconfig.

The default ``local-path`` class provisions a directory per claim and binds it; pods mount it
(with subPath); deleting a claim reclaims its volume as the class says; static volumes bind too;
the scheduler keeps a pod Pending while its claim is missing or unbound and honours the access
modes across two nodes; bad input gets the real API's errors; kubectl prints the real columns.
Every wait is a watch over the API (no polling); every cluster, and with it every pod process,
is stopped by the fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import pytest_asyncio
import yaml
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.podenv import ConfigError
from elastic_kernels.localcluster.volumes import container_mounts

pytestmark = pytest.mark.timeout(60)

KUBECTL = Path(sys.executable).parent / "kubectl"
NS = "/api/v1/namespaces/default"
PVCS = f"{NS}/persistentvolumeclaims"
PODS = f"{NS}/pods"
PVS = "/api/v1/persistentvolumes"
CLASSES = "/apis/storage.k8s.io/v1/storageclasses"
JSON = dict[str, Any]


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two CPU nodes, nothing applied; stopped (every pod process with it) after the test."""
    c = LocalCluster(nodes=2, gpus_per_node=0, workdir=tmp_path / "cluster",
                     crash_backoff_seconds=0.2)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


class Api:
    """Requests as the admin whose token the cluster's kubeconfig holds, over HTTPS."""

    def __init__(self, cluster: LocalCluster) -> None:
        doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
        self.token = str(doc["users"][0]["user"]["token"])
        self.base = str(doc["clusters"][0]["cluster"]["server"])
        self.ssl = ssl.create_default_context(cadata=cluster.ca_pem.decode())

    def _request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> HTTPRequest:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = ("application/merge-patch+json" if method == "PATCH"
                                       else "application/json")
        return HTTPRequest(self.base + path, method=method, headers=headers, body=data,
                           ssl_options=self.ssl, **kwargs)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        client = AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(self._request(method, path, body, request_timeout=20),
                                          raise_error=False)
        finally:
            client.close()
        text = (response.body or b"").decode()
        try:
            return response.code, json.loads(text)
        except ValueError:
            return response.code, text

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        code, answer = await self.call(method, path, body)
        assert code in (200, 201), (method, path, code, answer)
        return answer

    async def until(self, collection: str, name: str,
                    predicate: Callable[[JSON | None], bool]) -> JSON | None:
        """Watch one object until ``predicate`` holds for it (None: it is gone)."""
        # Read it first; then watch from exactly that version, so no change in between is
        # missed (a missing object: a watch from "now", which first lists what exists).
        code, current = await self.call("GET", f"{collection}/{name}")
        found = current if code == 200 else None
        if predicate(found):
            return found
        return await self.first(collection, f"metadata.name={name}", predicate,
                                None if found is None else found["metadata"]["resourceVersion"])

    async def first(self, collection: str, field_selector: str,
                    predicate: Callable[[JSON | None], bool],
                    resource_version: str | None = None) -> JSON | None:
        """Watch the selected objects (from ``resource_version``, else from a list of what
        exists now) until one event's object satisfies ``predicate`` (None: deleted)."""
        query = f"watch=1&fieldSelector={quote(field_selector)}"
        if resource_version is not None:
            query += f"&resourceVersion={resource_version}"
        found: JSON | None = None
        async for line in self._stream_lines(f"{collection}?{query}"):
            event = json.loads(line)
            if event["type"] == "BOOKMARK":
                continue
            found = None if event["type"] == "DELETED" else event["object"]
            if predicate(found):
                return found
        raise AssertionError(f"the watch of {field_selector} ended first; last seen: {found}")

    async def _stream_lines(self, path: str) -> AsyncIterator[bytes]:
        """The lines of a streamed (chunked) response; the connection closes when the caller
        stops reading."""
        url = urlsplit(self.base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=self.ssl)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                         f"Authorization: Bearer {self.token}\r\nAccept: application/json\r\n"
                         f"Connection: close\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            assert status.split()[1:2] == [b"200"], status
            chunked = False
            while (header := await reader.readline()) not in (b"\r\n", b""):
                chunked = chunked or header.lower().replace(b" ", b"") == (
                    b"transfer-encoding:chunked\r\n")
            buffer = b""
            while True:
                if chunked:
                    size = int((await reader.readline()).strip() or b"0", 16)
                    if size == 0:
                        return
                    buffer += (await reader.readexactly(size + 2))[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield line
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def log(self, pod: str) -> str:
        code, text = await self.call("GET", f"{PODS}/{pod}/log")
        assert code == 200, text
        return str(text)


def phase(obj: JSON | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def has_phase(*phases: str) -> Callable[[JSON | None], bool]:
    return lambda obj: phase(obj) in phases


def claim(name: str, size: str = "1Gi", modes: tuple[str, ...] = ("ReadWriteOnce",),
          **spec: Any) -> JSON:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": size}},
                     **spec}}


def pod(name: str, claim_name: str, script: str, *args: str, node: str | None = None,
        sub_path: str | None = None, read_only: bool = False) -> JSON:
    """A pod running ``python -c script args...`` with the claim at /data (paths in ``args``
    starting with /data are rewritten to the volume's directory by the kubelet)."""
    mount: JSON = {"name": "data", "mountPath": "/data"}
    if sub_path:
        mount["subPath"] = sub_path
    spec: JSON = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                  "containers": [{"name": "main", "image": "python:3.11",
                                  "command": ["python", "-c", script, *args],
                                  "volumeMounts": [mount]}],
                  "volumes": [{"name": "data", "persistentVolumeClaim": {
                      "claimName": claim_name, "readOnly": read_only}}]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


WRITE = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
READ = "import sys; print(open(sys.argv[1]).read())"
SLEEP = "import time; time.sleep(600)"


def scheduled_message(obj: JSON | None) -> str:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or "")
    return ""


# --- classes and dynamic provisioning -----------------------------------------------------------


async def test_default_class_provisions_and_binds_a_directory(cluster: LocalCluster) -> None:
    api = Api(cluster)
    sc = await api.ok("GET", f"{CLASSES}/local-path")
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert (sc["provisioner"], sc["reclaimPolicy"], sc["volumeBindingMode"]) == (
        "elastic-kernels.local/local-path", "Delete", "Immediate")

    created = await api.ok("POST", PVCS, claim("data", "2Gi"))
    assert created["spec"]["storageClassName"] == "local-path"  # DefaultStorageClass admission
    assert "kubernetes.io/pvc-protection" in created["metadata"]["finalizers"]
    bound = await api.until(PVCS, "data", has_phase("Bound"))
    assert bound is not None
    assert bound["status"]["capacity"] == {"storage": "2Gi"}
    assert bound["status"]["accessModes"] == ["ReadWriteOnce"]
    pv = await api.ok("GET", f"{PVS}/{bound['spec']['volumeName']}")
    assert pv["status"]["phase"] == "Bound"
    assert pv["spec"]["claimRef"]["name"] == "data"
    assert pv["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    directory = Path(pv["spec"]["hostPath"]["path"])
    assert directory.parent == cluster.workdir / "volumes" and directory.is_dir()

    # An explicit "" means no class: nothing provisions it, it waits for a matching volume.
    await api.ok("POST", PVCS, claim("static-only", storageClassName=""))
    code, got = await api.call("GET", f"{PVCS}/static-only")
    assert code == 200 and got["spec"]["storageClassName"] == "" and phase(got) == "Pending"


async def test_a_file_written_by_one_pod_is_read_by_the_next(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("notes"))
    await api.ok("POST", PODS, pod("writer", "notes", WRITE, "/data/hello.txt", "from writer"))
    assert phase(await api.until(PODS, "writer", has_phase("Succeeded", "Failed"))) == "Succeeded"
    await api.ok("POST", PODS, pod("reader", "notes", READ, "/data/hello.txt"))
    assert phase(await api.until(PODS, "reader", has_phase("Succeeded", "Failed"))) == "Succeeded"
    assert (await api.log("reader")).strip() == "from writer"


async def test_sub_path_is_created_inside_the_volume(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("home"))
    await api.ok("POST", PODS, pod("alice", "home", WRITE, "/data/profile", "alice's",
                                   sub_path="users/alice"))
    assert phase(await api.until(PODS, "alice", has_phase("Succeeded", "Failed"))) == "Succeeded"
    bound = await api.ok("GET", f"{PVCS}/home")
    pv = await api.ok("GET", f"{PVS}/{bound['spec']['volumeName']}")
    written = Path(pv["spec"]["hostPath"]["path"]) / "users" / "alice" / "profile"
    assert written.read_text() == "alice's"

    for bad, why in (("../escape", "must not contain '..'"), ("/abs", "must be a relative path")):
        code, status = await api.call("POST", PODS, pod("bad", "home", READ, sub_path=bad))
        assert code == 422, status
        assert status["message"] == (
            f'Pod "bad" is invalid: spec.containers[0].volumeMounts[0].subPath: Invalid value: '
            f'"{bad}": {why}')


# --- pods waiting for claims --------------------------------------------------------------------


async def test_a_pod_whose_claim_is_missing_waits_then_starts(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PODS, pod("early", "later", WRITE, "/data/x", "1"))
    waiting = await api.until(PODS, "early", lambda p: bool(scheduled_message(p)))
    assert scheduled_message(waiting) == (
        '0/2 nodes are available: persistentvolumeclaim "later" not found.')
    events = await api.ok("GET", f"{NS}/events?fieldSelector=involvedObject.name%3Dearly")
    assert any(e["reason"] == "FailedScheduling" and 'persistentvolumeclaim "later" not found'
               in e["message"] for e in events["items"])

    # A claim nothing can bind (no class, no volume) keeps it Pending with the unbound reason.
    await api.ok("POST", PVCS, claim("later", storageClassName=""))
    waiting = await api.until(PODS, "early", lambda p: "unbound immediate" in scheduled_message(p))
    assert scheduled_message(waiting) == (
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.")

    # A volume for it appears (static provisioning): it binds and the pod runs.
    host = cluster.workdir / "static"
    host.mkdir()
    await api.ok("POST", PVS, {"apiVersion": "v1", "kind": "PersistentVolume",
                               "metadata": {"name": "handmade"},
                               "spec": {"capacity": {"storage": "5Gi"},
                                        "accessModes": ["ReadWriteOnce"],
                                        "hostPath": {"path": str(host)},
                                        "storageClassName": ""}})
    assert phase(await api.until(PODS, "early", has_phase("Succeeded", "Failed"))) == "Succeeded"
    assert (host / "x").read_text() == "1"
    pv = await api.ok("GET", f"{PVS}/handmade")
    assert pv["status"]["phase"] == "Bound" and pv["spec"]["claimRef"]["name"] == "later"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"  # the API's default


async def test_a_volume_pre_bound_to_a_claim_binds_to_it(cluster: LocalCluster,
                                                         tmp_path: Path) -> None:
    api = Api(cluster)
    for name in ("big", "reserved"):
        await api.ok("POST", PVS, {"apiVersion": "v1", "kind": "PersistentVolume",
                                   "metadata": {"name": name},
                                   "spec": {"capacity": {"storage": "10Gi"},
                                            "accessModes": ["ReadWriteOnce"],
                                            "storageClassName": "manual",
                                            "hostPath": {"path": str(tmp_path / name)},
                                            **({"claimRef": {"namespace": "default",
                                                             "name": "mine"}}
                                               if name == "reserved" else {})}})
    await api.ok("POST", PVCS, claim("mine", storageClassName="manual"))
    bound = await api.until(PVCS, "mine", has_phase("Bound"))
    assert bound is not None and bound["spec"]["volumeName"] == "reserved"
    assert bound["status"]["capacity"] == {"storage": "10Gi"}
    big = await api.until(PVS, "big", has_phase("Available"))
    assert big is not None and "claimRef" not in big["spec"]


async def test_a_pod_placed_by_hand_waits_in_the_kubelet_for_its_claim(
        cluster: LocalCluster) -> None:
    api = Api(cluster)
    body = pod("placed", "soon", WRITE, "/data/y", "2")
    body["spec"]["nodeName"] = "local-node-1"  # no scheduler: the kubelet must wait
    await api.ok("POST", PODS, body)
    event = await api.first(f"{NS}/events", "involvedObject.name=placed,reason=FailedMount",
                            lambda e: e is not None)
    assert event is not None and event["message"] == (
        "Unable to attach or mount volumes: unmounted volumes=[data], unattached volumes=[], "
        "failed to process volumes=[data]: error processing PVC default/soon: failed to fetch "
        'PVC from API server: persistentvolumeclaims "soon" not found')
    assert phase(await api.ok("GET", f"{PODS}/placed")) == "Pending"
    await api.ok("POST", PVCS, claim("soon"))
    assert phase(await api.until(PODS, "placed", has_phase("Succeeded", "Failed"))) == "Succeeded"


async def test_a_wait_for_first_consumer_class_provisions_once_a_pod_uses_the_claim(
        cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", CLASSES, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                   "metadata": {"name": "lazy"},
                                   "provisioner": "elastic-kernels.local/local-path",
                                   "volumeBindingMode": "WaitForFirstConsumer"})
    await api.ok("POST", PVCS, claim("deferred", storageClassName="lazy"))
    waiting = await api.first(f"{NS}/events", "involvedObject.name=deferred",
                              lambda e: e is not None)
    assert waiting is not None and (waiting["reason"], waiting["message"]) == (
        "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
    assert phase(await api.ok("GET", f"{PVCS}/deferred")) == "Pending"
    await api.ok("POST", PODS, pod("consumer", "deferred", WRITE, "/data/z", "3"))
    assert phase(await api.until(PODS, "consumer", has_phase("Succeeded", "Failed"))) == (
        "Succeeded")
    assert phase(await api.ok("GET", f"{PVCS}/deferred")) == "Bound"


async def test_deleting_a_hand_made_volume_never_removes_host_files(cluster: LocalCluster,
                                                                     tmp_path: Path) -> None:
    api = Api(cluster)
    host = tmp_path / "important"
    host.mkdir()
    (host / "keep").write_text("me")
    await api.ok("POST", PVS, {"apiVersion": "v1", "kind": "PersistentVolume",
                               "metadata": {"name": "byhand"},
                               "spec": {"capacity": {"storage": "1Gi"},
                                        "accessModes": ["ReadWriteOnce"],
                                        "persistentVolumeReclaimPolicy": "Delete",
                                        "storageClassName": "", "hostPath": {"path": str(host)}}})
    await api.ok("POST", PVCS, claim("borrow", storageClassName=""))
    await api.until(PVCS, "borrow", has_phase("Bound"))
    await api.ok("DELETE", f"{PVCS}/borrow")
    failed = await api.until(PVS, "byhand", has_phase("Failed"))
    assert failed is not None and failed["status"]["message"] == (
        'error getting deleter volume plugin for volume "byhand": no deletable volume plugin '
        "matched")
    assert (host / "keep").read_text() == "me"


# --- access modes across nodes ------------------------------------------------------------------


async def test_read_write_once_keeps_its_pods_on_one_node(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("solo"))
    await api.ok("POST", PODS, pod("first", "solo", SLEEP, node="local-node-0"))
    await api.until(PODS, "first", has_phase("Running"))
    await api.ok("POST", PODS, pod("elsewhere", "solo", READ, "/data/x", node="local-node-1"))
    waiting = await api.until(PODS, "elsewhere", lambda p: bool(scheduled_message(p)))
    assert scheduled_message(waiting) == (
        "0/2 nodes are available: 1 node(s) did not have the pods already using a "
        "ReadWriteOnce PersistentVolumeClaim of this pod, 1 node(s) didn't match Pod's node "
        "affinity/selector.")
    # Unpinned, a second pod goes where the claim is in use.
    await api.ok("POST", PODS, pod("beside", "solo", SLEEP))
    beside = await api.until(PODS, "beside", lambda p: bool(((p or {}).get("spec") or {})
                                                            .get("nodeName")))
    assert beside is not None and beside["spec"]["nodeName"] == "local-node-0"
    # Once no pod on node 0 uses it, the waiting pod runs on node 1.
    for name in ("first", "beside"):
        await api.ok("DELETE", f"{PODS}/{name}")
    for name in ("first", "beside"):
        await api.until(PODS, name, lambda p: p is None)
    done = await api.until(PODS, "elsewhere", has_phase("Succeeded", "Failed"))
    assert done is not None and done["spec"]["nodeName"] == "local-node-1"


async def test_read_write_once_pod_serves_one_pod_at_a_time(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("exclusive", modes=("ReadWriteOncePod",)))
    await api.ok("POST", PODS, pod("holder", "exclusive", SLEEP))
    await api.until(PODS, "holder", has_phase("Running"))
    await api.ok("POST", PODS, pod("next", "exclusive", READ, "/data/x"))
    waiting = await api.until(PODS, "next", lambda p: bool(scheduled_message(p)))
    assert scheduled_message(waiting) == (
        "0/2 nodes are available: 2 node has pod using PersistentVolumeClaim with the same name "
        "and ReadWriteOncePod access mode.")


async def test_read_write_many_is_shared_across_nodes(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("shared", modes=("ReadWriteMany",)))
    await api.ok("POST", PODS, pod("holder", "shared", SLEEP, node="local-node-0"))
    await api.until(PODS, "holder", has_phase("Running"))
    # While it runs on node 0, a pod on node 1 writes and one on node 0 reads.
    await api.ok("POST", PODS, pod("writer", "shared", WRITE, "/data/f", "across",
                                   node="local-node-1"))
    assert phase(await api.until(PODS, "writer", has_phase("Succeeded", "Failed"))) == "Succeeded"
    await api.ok("POST", PODS, pod("reader", "shared", READ, "/data/f", node="local-node-0",
                                   read_only=True))
    assert phase(await api.until(PODS, "reader", has_phase("Succeeded", "Failed"))) == "Succeeded"
    assert (await api.log("reader")).strip() == "across"
    holder = await api.ok("GET", f"{PODS}/holder")
    assert phase(holder) == "Running"


# --- deletion and reclaim -----------------------------------------------------------------------


async def test_deleting_a_claim_waits_for_its_pod_then_deletes_the_volume(
        cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("scratch"))
    await api.ok("POST", PODS, pod("user", "scratch", SLEEP))
    await api.until(PODS, "user", has_phase("Running"))
    bound = await api.ok("GET", f"{PVCS}/scratch")
    volume = bound["spec"]["volumeName"]
    directory = Path((await api.ok("GET", f"{PVS}/{volume}"))["spec"]["hostPath"]["path"])

    await api.ok("DELETE", f"{PVCS}/scratch")
    terminating = await api.ok("GET", f"{PVCS}/scratch")  # protected while the pod uses it
    assert terminating["metadata"]["deletionTimestamp"]
    assert directory.is_dir()

    await api.ok("DELETE", f"{PODS}/user")
    assert await api.until(PVCS, "scratch", lambda c: c is None) is None
    assert await api.until(PVS, volume, lambda v: v is None) is None
    assert not directory.exists()


async def test_a_retain_class_keeps_the_volume_released(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", CLASSES, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                   "metadata": {"name": "keep"},
                                   "provisioner": "elastic-kernels.local/local-path",
                                   "reclaimPolicy": "Retain"})
    await api.ok("POST", PVCS, claim("precious", storageClassName="keep"))
    await api.ok("POST", PODS, pod("save", "precious", WRITE, "/data/thesis", "v1"))
    assert phase(await api.until(PODS, "save", has_phase("Succeeded", "Failed"))) == "Succeeded"
    volume = (await api.ok("GET", f"{PVCS}/precious"))["spec"]["volumeName"]
    await api.ok("DELETE", f"{PODS}/save")
    await api.ok("DELETE", f"{PVCS}/precious")
    released = await api.until(PVS, volume, has_phase("Released"))
    assert released is not None and released["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert (Path(released["spec"]["hostPath"]["path"]) / "thesis").read_text() == "v1"


# --- validation ---------------------------------------------------------------------------------


async def test_bad_claims_volumes_and_classes_get_the_real_errors(cluster: LocalCluster) -> None:
    api = Api(cluster)
    cases: list[tuple[str, JSON, str]] = [
        (PVCS, {**claim("nosize"), "spec": {"accessModes": ["ReadWriteOnce"]}},
         'PersistentVolumeClaim "nosize" is invalid: spec.resources[storage]: Required value'),
        (PVCS, claim("badmode", modes=("ReadWriteSometimes",)),
         'PersistentVolumeClaim "badmode" is invalid: spec.accessModes: Unsupported value: '
         '"ReadWriteSometimes": supported values: "ReadOnlyMany", "ReadWriteMany", '
         '"ReadWriteOnce", "ReadWriteOncePod"'),
        (PVCS, claim("nomode", modes=()),
         'PersistentVolumeClaim "nomode" is invalid: spec.accessModes: Required value: at least '
         '1 access mode is required'),
        (PVCS, claim("mixed", modes=("ReadWriteOncePod", "ReadWriteMany")),
         'PersistentVolumeClaim "mixed" is invalid: spec.accessModes: Forbidden: may not use '
         'ReadWriteOncePod with other access modes'),
        (PVCS, claim("zero", "0"),
         'PersistentVolumeClaim "zero" is invalid: spec.resources[storage]: Invalid value: "0": '
         'must be greater than zero'),
        (PVS, {"metadata": {"name": "nocap"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                        "hostPath": {"path": "/tmp/x"}}},
         'PersistentVolume "nocap" is invalid: spec.capacity: Required value'),
        (PVS, {"metadata": {"name": "nosource"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                           "capacity": {"storage": "1Gi"}}},
         'PersistentVolume "nosource" is invalid: spec: Required value: must specify a volume '
         'type'),
        (CLASSES, {"metadata": {"name": "noprov"}},
         'StorageClass.storage.k8s.io "noprov" is invalid: provisioner: Required value'),
    ]
    for path, body, message in cases:
        code, status = await api.call("POST", path, body)
        assert (code, status["message"]) == (422, message)

    await api.ok("POST", PVCS, claim("fixed"))
    await api.until(PVCS, "fixed", has_phase("Bound"))
    code, status = await api.call("PATCH", f"{PVCS}/fixed",
                                  {"spec": {"accessModes": ["ReadWriteMany"]}})
    assert (code, status["message"]) == (
        422, 'PersistentVolumeClaim "fixed" is invalid: spec: Forbidden: spec is immutable after '
             'creation except resources.requests and volumeAttributesClassName for bound claims')
    code, status = await api.call("PATCH", f"{CLASSES}/local-path",
                                  {"provisioner": "example.com/other"})
    assert (code, status["message"]) == (
        422, 'StorageClass.storage.k8s.io "local-path" is invalid: provisioner: Forbidden: '
             'updates to provisioner are forbidden.')


# --- kubectl ------------------------------------------------------------------------------------


@pytest.mark.kubectl
async def test_kubectl_prints_claims_volumes_and_classes(cluster: LocalCluster) -> None:
    api = Api(cluster)
    await api.ok("POST", PVCS, claim("data", "3Gi", modes=("ReadWriteOnce", "ReadOnlyMany")))
    bound = await api.until(PVCS, "data", has_phase("Bound"))
    assert bound is not None
    volume = bound["spec"]["volumeName"]
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL), f"--kubeconfig={cluster.kubeconfig_path}", "get", "pvc,pv,storageclass",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(cluster.workdir)})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    blocks = [b.splitlines() for b in out.decode().strip().split("\n\n")]
    pvc_block, pv_block, sc_block = blocks
    assert pvc_block[0].split() == ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS", "MODES",
                                    "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "AGE"]
    assert pvc_block[1].split()[:7] == ["persistentvolumeclaim/data", "Bound", volume, "3Gi",
                                        "RWO,ROX", "local-path", "<unset>"]
    assert pv_block[0].split() == ["NAME", "CAPACITY", "ACCESS", "MODES", "RECLAIM", "POLICY",
                                   "STATUS", "CLAIM", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS",
                                   "REASON", "AGE"]
    assert pv_block[1].split()[:8] == [f"persistentvolume/{volume}", "3Gi", "RWO,ROX",
                                       "Delete", "Bound", "default/data", "local-path",
                                       "<unset>"]
    assert sc_block[0].split() == ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE",
                                   "ALLOWVOLUMEEXPANSION", "AGE"]
    assert sc_block[1].split()[:6] == ["storageclass.storage.k8s.io/local-path", "(default)",
                                       "elastic-kernels.local/local-path", "Delete", "Immediate",
                                       "false"]


# --- the kubelet's subPath, on disk -------------------------------------------------------------


def test_a_sub_path_never_leads_out_of_its_volume(tmp_path: Path) -> None:
    volume, outside = tmp_path / "volume", tmp_path / "outside"
    volume.mkdir()
    outside.mkdir()
    (volume / "link").symlink_to(outside)
    container = {"name": "main", "volumeMounts": [
        {"name": "data", "mountPath": "/data", "subPath": "made/here"}]}
    mounts = container_mounts(container, {"data": volume})
    assert mounts[0].host_path == volume / "made" / "here" and mounts[0].host_path.is_dir()
    for sub in ("link", "link/deeper", "../outside"):
        container["volumeMounts"][0]["subPath"] = sub
        with pytest.raises(ConfigError) as info:
            container_mounts(container, {"data": volume})
        assert info.value.message == ('failed to prepare subPath for volumeMount "data" of '
                                      'container "main"')
    assert not (outside / "deeper").exists()
