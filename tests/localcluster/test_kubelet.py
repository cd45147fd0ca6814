"""The local kubelet: env, volumes, images and processes, then whole pods through the real Store.

Pods run real `python -c` processes that print what they see; the test reads it back through the
kubelet's log provider (what ``kubectl logs`` gets). Every kubelet is stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from elastic_kernels.localcluster.allocators import DeviceAllocator, DeviceExhausted, IPAllocator
from elastic_kernels.localcluster.errors import ApiError
from elastic_kernels.localcluster.images import ImagePolicy, normalize_image
from elastic_kernels.localcluster.nodes import NodeConfig
from elastic_kernels.localcluster.podenv import ConfigError, container_env, expand
from elastic_kernels.localcluster.podstatus import (crash_backoff, go_duration, pod_phase,
                                                    readiness_condition)
from elastic_kernels.localcluster.processes import ContainerProcess, LogBuffer, StartFailure
from elastic_kernels.localcluster.volumes import (SERVICE_ACCOUNT_MOUNT, Mount, VolumeError,
                                                  container_mounts, materialise_volumes,
                                                  rewrite_arg, rewrite_value)

try:
    from kubelet_fixtures import (PODS, container_state, events_for, group_alive, pod,
                                  running_cluster, wait_pod, waiting_reason)
except ImportError:  # collected as a package
    from .kubelet_fixtures import (PODS, container_state, events_for, group_alive, pod,
                                   running_cluster, wait_pod, waiting_reason)

pytestmark = pytest.mark.timeout(20)

SECRETS = ("", "secrets")
CONFIGMAPS = ("", "configmaps")


# --- env resolution (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize("text, out", [
    ("$(A)", "1"),
    ("x$(A)y$(B)", "x1y2"),
    ("$$(A)", "$(A)"),
    ("$(MISSING)", "$(MISSING)"),
    ("$(A", "$(A"),
    ("a$b", "a$b"),
    ("cost: 5$", "cost: 5$"),
    ("$$$(A)", "$1"),
])
def test_expansion_follows_kubernetes_rules(text: str, out: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == out


def _lookup(objects: dict[tuple[str, str], dict]):
    return lambda kind, ns, name: objects.get((kind, name))


def test_container_env_order_sources_and_errors() -> None:
    objects = {
        ("secrets", "s"): {"data": {"token": base64.b64encode(b"t0k").decode(),
                                    "bad-name!": base64.b64encode(b"x").decode()}},
        ("configmaps", "cm"): {"data": {"MODE": "fast", "LEVEL": "3"}},
    }
    p = {"metadata": {"name": "p", "namespace": "ns1", "uid": "u-1", "labels": {"a": "b"}},
         "spec": {"nodeName": "n0"}, "status": {"podIP": "127.1.2.3"}}
    container = {
        "name": "main",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"},
                    {"secretRef": {"name": "s"}}],
        "env": [
            {"name": "CM_MODE", "value": "override-$(CM_LEVEL)"},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "LBL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                           "optional": True}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                               "divisor": "1m"}}},
            {"name": "URL", "value": "http://$(IP):8888"},
        ],
        "resources": {"limits": {"cpu": "1500m"}},
    }
    p["spec"]["containers"] = [container]
    env = container_env(p, container, _lookup(objects), service_env={"KUBERNETES_SERVICE_HOST":
                                                                     "127.0.0.1"})
    assert env["CM_MODE"] == "override-3"
    assert env["token"] == "t0k"
    assert "bad-name!" not in env
    assert env["IP"] == "127.1.2.3" and env["NS"] == "ns1" and env["LBL"] == "b"
    assert "OPT" not in env
    assert env["CPU"] == "1500"
    assert env["URL"] == "http://127.1.2.3:8888"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"

    missing_secret = {"name": "m", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {
        "name": "absent", "key": "k"}}}]}
    with pytest.raises(ConfigError) as info:
        container_env(p, missing_secret, _lookup(objects))
    assert info.value.message == 'secret "absent" not found'
    missing_key = {"name": "m", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {
        "name": "cm", "key": "NOPE"}}}]}
    with pytest.raises(ConfigError) as info:
        container_env(p, missing_key, _lookup(objects))
    assert info.value.message == "couldn't find key NOPE in ConfigMap ns1/cm"
    with pytest.raises(ConfigError, match='configmap "gone" not found'):
        container_env(p, {"envFrom": [{"configMapRef": {"name": "gone"}}]}, _lookup(objects))


# --- volumes (pure, on disk) --------------------------------------------------------------------


def test_secret_configmap_and_empty_dir_volumes(tmp_path: Path) -> None:
    objects = {
        ("secrets", "kernel-key"): {"data": {"key": base64.b64encode(b"s3cret").decode(),
                                             "other": base64.b64encode(b"o").decode()}},
        ("configmaps", "settings"): {"data": {"a.json": "{}"},
                                     "binaryData": {"blob": base64.b64encode(b"\x00\x01")
                                                    .decode()}},
    }
    p = {"metadata": {"name": "p", "namespace": "default", "uid": "u"},
         "spec": {"volumes": [
             {"name": "key", "secret": {"secretName": "kernel-key", "defaultMode": 0o400,
                                        "items": [{"key": "key", "path": "conn/key"}]}},
             {"name": "cfg", "configMap": {"name": "settings"}},
             {"name": "scratch", "emptyDir": {}},
             {"name": "opt", "secret": {"secretName": "absent", "optional": True}},
         ]}}
    dirs = materialise_volumes(p, tmp_path, _lookup(objects))
    key_file = dirs["key"] / "conn" / "key"
    assert key_file.read_bytes() == b"s3cret"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o400
    assert not (dirs["key"] / "other").exists()
    assert (dirs["cfg"] / "a.json").read_text() == "{}"
    assert (dirs["cfg"] / "blob").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((dirs["cfg"] / "a.json").stat().st_mode) == 0o644
    assert dirs["scratch"].is_dir() and not any(dirs["scratch"].iterdir())
    assert dirs["opt"].is_dir()

    p["spec"]["volumes"].append({"name": "must", "secret": {"secretName": "absent"}})
    with pytest.raises(VolumeError) as info:
        materialise_volumes(p, tmp_path, _lookup(objects))
    assert info.value.message == ('MountVolume.SetUp failed for volume "must" : '
                                  'secret "absent" not found')
    p["spec"]["volumes"][-1] = {"name": "badkey", "secret": {
        "secretName": "kernel-key", "items": [{"key": "missing", "path": "x"}]}}
    with pytest.raises(VolumeError, match="references non-existent secret key: missing"):
        materialise_volumes(p, tmp_path, _lookup(objects))
    p["spec"]["volumes"][-1] = {"name": "escape", "configMap": {
        "name": "settings", "items": [{"key": "a.json", "path": "../../etc/x"}]}}
    with pytest.raises(VolumeError, match="may not contain"):
        materialise_volumes(p, tmp_path, _lookup(objects))


def test_mount_path_rewrite() -> None:
    container = {"volumeMounts": [{"name": "key", "mountPath": "/etc/kernel"},
                                  {"name": "deep", "mountPath": "/etc/kernel/deep/"},
                                  {"name": "unknown", "mountPath": "/nowhere"}]}
    mounts = container_mounts(container, {"key": Path("/h/key"), "deep": Path("/h/deep")},
                              sa_dir=Path("/h/sa"))
    assert [m.mount_path for m in mounts] == [SERVICE_ACCOUNT_MOUNT, "/etc/kernel/deep",
                                              "/etc/kernel"]  # longest first
    assert Mount(SERVICE_ACCOUNT_MOUNT, Path("/h/sa"), True) in mounts
    assert rewrite_value("/etc/kernel", mounts) == "/h/key"
    assert rewrite_value("/etc/kernel/key", mounts) == "/h/key/key"
    assert rewrite_value("/etc/kernel/deep/x", mounts) == "/h/deep/x"
    assert rewrite_value("/etc/kernelx", mounts) == "/etc/kernelx"
    assert rewrite_value("relative/etc/kernel", mounts) == "relative/etc/kernel"
    assert rewrite_arg("--key-file=/etc/kernel/key", mounts) == "--key-file=/h/key/key"
    assert rewrite_arg("--flag=value", mounts) == "--flag=value"
    assert rewrite_value(f"{SERVICE_ACCOUNT_MOUNT}/token", mounts) == "/h/sa/token"


# --- images, allocators, status rules (pure) ----------------------------------------------------


def test_image_policy_mapping() -> None:
    policy = ImagePolicy()
    assert policy.launchers_dir.name == "launchers"
    assert policy.launchers_dir.parent == Path(__file__).resolve().parents[2]
    assert policy.is_available("python:3.11")
    assert not policy.is_available("registry.local/does-not-exist:1")
    assert normalize_image("python") == "docker.io/library/python:latest"
    assert normalize_image("jupyter/base:2024") == "docker.io/jupyter/base:2024"
    assert normalize_image("ghcr.io/org/img") == "ghcr.io/org/img:latest"
    assert normalize_image("localhost:5000/x@sha256:ab") == "localhost:5000/x@sha256:ab"
    assert policy.pull_error("does-not-exist") == (
        'rpc error: code = NotFound desc = failed to pull and unpack image '
        '"docker.io/library/does-not-exist:latest": failed to resolve reference '
        '"docker.io/library/does-not-exist:latest": docker.io/library/does-not-exist:latest: '
        'not found')
    assert policy.image_id("python:3.11").startswith("docker.io/library/python@sha256:")
    path = policy.search_path("/custom/bin").split(os.pathsep)
    assert path[0] == str(policy.launchers_dir)
    assert path[1] == str(Path(sys.executable).parent)
    assert path[-1] == "/custom/bin"


def test_allocators() -> None:
    ips = IPAllocator(seed=1)
    got = {ips.allocate() for _ in range(600)}
    assert len(got) == 600
    assert all(IPAllocator.is_pod_address(ip) and ip != "127.0.0.1" for ip in got)
    ip = next(iter(got))
    ips.release(ip)
    assert ip not in ips.in_use()

    gpus = DeviceAllocator()
    gpus.set_capacity("n", 4)
    assert gpus.allocate("n", "pod-a/c1", 2) == [0, 1]
    assert gpus.allocate("n", "pod-b/c1", 1) == [2]
    with pytest.raises(DeviceExhausted) as info:
        gpus.allocate("n", "pod-c/c1", 2)
    assert info.value.message == (
        "Allocate failed due to requested number of devices unavailable for nvidia.com/gpu. "
        "Requested: 2, Available: 1, which is unexpected")
    gpus.release("n", "pod-a")
    assert gpus.free("n") == [0, 1, 3]


def test_phase_rules_and_backoff_wording() -> None:
    spec = {"restartPolicy": "Always", "containers": [{"name": "a"}, {"name": "b"}]}
    running = {"state": {"running": {}}, "ready": True}
    ok = {"state": {"terminated": {"exitCode": 0}}}
    bad = {"state": {"terminated": {"exitCode": 1}}}
    crash = {"state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1}}}
    creating = {"state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_phase(spec, [{"name": "a", **running}, {"name": "b", **creating}]) == "Pending"
    assert pod_phase(spec, [{"name": "a", **running}, {"name": "b", **crash}]) == "Running"
    assert pod_phase(spec, [{"name": "a", **ok}, {"name": "b", **bad}]) == "Running"
    assert pod_phase({**spec, "restartPolicy": "Never"},
                     [{"name": "a", **ok}, {"name": "b", **bad}]) == "Failed"
    assert pod_phase({**spec, "restartPolicy": "OnFailure"},
                     [{"name": "a", **ok}, {"name": "b", **ok}]) == "Succeeded"
    assert pod_phase(spec, [{"name": "a", **ok}, {"name": "b", **ok}], True) == "Succeeded"
    cond = readiness_condition("Ready", spec, [{"name": "a", **running},
                                               {"name": "b", **creating}], "Pending")
    assert cond == {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                    "message": "containers with unready status: [b]"}
    assert [go_duration(crash_backoff(n, 10, 300)) for n in range(1, 9)] == [
        "0s", "10s", "20s", "40s", "1m20s", "2m40s", "5m0s", "5m0s"]
    assert go_duration(0.25) == "250ms"


# --- processes and logs -------------------------------------------------------------------------


async def test_log_buffer_is_bounded_and_line_oriented() -> None:
    buf = LogBuffer(limit=100)
    buf.append(b"first line\nsecond ")
    assert buf.text() == "first line\nsecond "
    buf.append(b"part\n")
    assert buf.text(tail_lines=1) == "second part\n"
    for i in range(50):
        buf.append(f"line {i}\n".encode())
    text = buf.text()
    assert len(text.encode()) <= 100 and text.endswith("line 49\n")
    assert "first line" not in text
    stamped = buf.text(timestamps=True, tail_lines=1)
    assert stamped.endswith("Z line 49\n") and stamped[:4].isdigit()

    follower = buf.follow(tail_lines=1)
    assert await follower.__anext__() == "line 49\n"
    pending = asyncio.ensure_future(follower.__anext__())
    await asyncio.sleep(0)
    buf.append(b"new\n")
    assert await pending == "new\n"
    buf.close()
    with pytest.raises(StopAsyncIteration):
        await follower.__anext__()


@pytest.mark.timeout(15)
async def test_process_group_is_stopped_with_its_children(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("child", child.pid, flush=True)
        time.sleep(60)
    """)
    buf = LogBuffer()
    proc = await ContainerProcess.start([sys.executable, "-c", script], env={},
                                        cwd=str(tmp_path), log_buffer=buf)
    try:
        async with asyncio.timeout(10):
            while "child" not in buf.text():
                await asyncio.sleep(0.02)
        child_pid = int(buf.text().split()[1])
        assert os.getpgid(child_pid) == proc.pid  # same group, so one signal reaches both
        code = await proc.stop(grace=0.3)  # SIGTERM is ignored: SIGKILL after the grace
        assert code == 128 + signal.SIGKILL
        assert not group_alive(proc.pid)
    finally:
        if proc.running:
            await proc.stop(0)
    with pytest.raises(StartFailure, match='exec: "/no/such/binary"'):
        await ContainerProcess.start(["/no/such/binary"], env={}, cwd=str(tmp_path),
                                     log_buffer=LogBuffer())


# --- whole pods through the store ---------------------------------------------------------------

PRINT_ENV = textwrap.dedent("""
    import json, os
    keys = ["LITERAL", "EXPANDED", "SECRET", "POD_IP", "CUDA_VISIBLE_DEVICES",
            "NVIDIA_VISIBLE_DEVICES", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
            "KEY_FILE", "HOSTNAME"]
    seen = {k: os.environ.get(k) for k in keys}
    seen["key_file_content"] = open(os.environ["KEY_FILE"]).read()
    sa = json.loads(os.environ["LOCALCLUSTER_MOUNTS"])[
        "/var/run/secrets/kubernetes.io/serviceaccount"]
    seen["sa_namespace"] = open(os.path.join(sa, "namespace")).read()
    seen["sa_token_set"] = bool(open(os.path.join(sa, "token")).read())
    seen["cwd"] = os.getcwd()
    print(json.dumps(seen), flush=True)
""")


@pytest.mark.timeout(30)
async def test_pod_sees_env_secret_files_devices_and_api(tmp_path: Path) -> None:
    async with running_cluster([NodeConfig("n0", gpus=4)], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        store.create(SECRETS, "default", {"metadata": {"name": "kernel-key"},
                                          "stringData": {"key": "hmac-value"}})
        body = pod("envpod", ["python", "-c", PRINT_ENV], gpus=2, container={
            "env": [
                {"name": "LITERAL", "value": "plain"},
                {"name": "EXPANDED", "value": "ip=$(POD_IP)"},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "kernel-key",
                                                                  "key": "key"}}},
                {"name": "KEY_FILE", "value": "/etc/kernel/key"},
            ],
            "volumeMounts": [{"name": "key", "mountPath": "/etc/kernel", "readOnly": True}],
        }, volumes=[{"name": "key", "secret": {"secretName": "kernel-key"}}])
        # POD_IP is defined after EXPANDED refers to it: Kubernetes leaves $(POD_IP) as is.
        body["spec"]["containers"][0]["env"].insert(
            2, {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        store.create(PODS, "default", body)
        done = await wait_pod(store, "envpod",
                              lambda p: bool(p and p["status"].get("phase") == "Succeeded"))
        seen = json.loads(kubelet.log_provider("default", "envpod", "main"))
        ip = done["status"]["podIP"]
        assert seen["LITERAL"] == "plain"
        assert seen["EXPANDED"] == "ip=$(POD_IP)"
        assert seen["POD_IP"] == ip and ip != "127.0.0.1" and ip.startswith("127.")
        assert seen["SECRET"] == "hmac-value"
        assert seen["key_file_content"] == "hmac-value"
        assert seen["KEY_FILE"] != "/etc/kernel/key" and seen["KEY_FILE"].endswith("/key/key")
        assert seen["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert seen["NVIDIA_VISIBLE_DEVICES"] == "0,1"
        assert seen["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
        assert seen["KUBERNETES_SERVICE_PORT"] == "6443"
        assert seen["HOSTNAME"] == "envpod"
        assert seen["sa_namespace"] == "default" and seen["sa_token_set"] is True
        assert Path(seen["cwd"]).parent == tmp_path
        assert "hmac-value" not in json.dumps(store.get(PODS, "default", "envpod"))

        status = done["status"]
        (cs,) = status["containerStatuses"]
        assert cs["state"]["terminated"]["exitCode"] == 0
        assert cs["state"]["terminated"]["reason"] == "Completed"
        assert cs["name"] == "main" and cs["image"] == "python:3.11"
        assert cs["imageID"].startswith("docker.io/library/python@sha256:")
        assert cs["containerID"].startswith("containerd://")
        assert cs["ready"] is False and cs["restartCount"] == 0
        assert status["hostIP"] == "127.0.0.1" and status["podIPs"] == [{"ip": ip}]
        assert status["startTime"]
        conds = {x["type"]: x for x in status["conditions"]}
        assert conds["PodScheduled"]["status"] == "True"
        assert conds["Initialized"]["status"] == "True"
        assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted"
        reasons = [e["reason"] for e in events_for(store, "envpod")]
        for reason in ("Scheduled", "Pulled", "Created", "Started"):
            assert reason in reasons

        # The GPUs were released when the pod completed: a 4-GPU pod fits the node now.
        store.create(PODS, "default", pod("all-gpus", ["python", "-c",
                                                       "import os; print(os.environ"
                                                       "['CUDA_VISIBLE_DEVICES'])"], gpus=4))
        await wait_pod(store, "all-gpus",
                       lambda p: bool(p and p["status"].get("phase") == "Succeeded"))
        assert kubelet.log_provider("default", "all-gpus") == "0,1,2,3\n"


@pytest.mark.timeout(30)
async def test_pod_ips_are_unique_and_bindable(tmp_path: Path) -> None:
    serve = textwrap.dedent("""
        import os, socket, time
        s = socket.socket()
        s.bind((os.environ["POD_IP"], 8765))  # the same port in every pod
        s.listen()
        print("listening", s.getsockname()[0], flush=True)
        time.sleep(60)
    """)
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    async with running_cluster([NodeConfig("n0"), NodeConfig("n1")], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        names = [f"srv-{i}" for i in range(3)]
        for name in names:
            store.create(PODS, "default", pod(name, ["python", "-c", serve],
                                              container={"env": env}))
        ips = []
        for name in names:
            p = await wait_pod(store, name, lambda p: bool(p and "running" in container_state(p)))
            ips.append(p["status"]["podIP"])
            async with asyncio.timeout(10):
                while "listening" not in kubelet.log_provider("default", name):
                    await asyncio.sleep(0.05)
            assert kubelet.log_provider("default", name) == f"listening {ips[-1]}\n"
            assert p["status"]["phase"] == "Running"
            conds = {x["type"]: x["status"] for x in p["status"]["conditions"]}
            assert conds["Ready"] == "True" and conds["ContainersReady"] == "True"
        assert len(set(ips)) == 3 and "127.0.0.1" not in ips
        for ip in ips:
            reader, writer = await asyncio.open_connection(ip, 8765)
            writer.close()
            await writer.wait_closed()


@pytest.mark.timeout(30)
async def test_delete_terminates_the_process_and_removes_the_pod(tmp_path: Path) -> None:
    ignore_term = textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """)
    async with running_cluster([NodeConfig("n0", gpus=1)], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        store.create(PODS, "default", pod("polite", restart="Always", gpus=1))
        store.create(PODS, "default", pod("stubborn", ["python", "-c", ignore_term],
                                          terminationGracePeriodSeconds=1))
        pids = {}
        for name in ("polite", "stubborn"):
            await wait_pod(store, name, lambda p: bool(p and "running" in container_state(p)))
            pids[name] = kubelet.pod_processes("default", name)["main"]
            assert group_alive(pids[name])
        async with asyncio.timeout(10):
            while "ready" not in kubelet.log_provider("default", "stubborn"):
                await asyncio.sleep(0.02)

        # A pod waiting for the GPU that "polite" holds.
        store.create(PODS, "default", pod("waiting-gpu", ["python", "-c", "print('got it')"],
                                          gpus=1))
        await wait_pod(store, "waiting-gpu",
                       lambda p: bool(p) and any(c.get("reason") == "Unschedulable"
                                                 for c in p["status"].get("conditions") or []))

        store.delete(PODS, "default", "polite")  # default grace: SIGTERM ends python at once
        marked = await wait_pod(store, "polite",
                                lambda p: p is None or bool(p["metadata"].get(
                                    "deletionTimestamp")))
        assert marked is None or marked["metadata"]["deletionGracePeriodSeconds"] == 5
        final = await wait_pod(store, "polite", lambda p: p is None or "terminated" in
                               container_state(p))
        if final is not None:
            term = container_state(final)["terminated"]
            assert term["exitCode"] == 128 + signal.SIGTERM and term["reason"] == "Error"
        await wait_pod(store, "polite", lambda p: p is None)
        assert not group_alive(pids["polite"])
        assert [e["message"] for e in events_for(store, "polite", "Killing")] == [
            "Stopping container main"]
        # Its GPU went back to the node: the waiting pod is scheduled and runs.
        await wait_pod(store, "waiting-gpu",
                       lambda p: bool(p and p["status"].get("phase") == "Succeeded"))

        store.delete(PODS, "default", "stubborn")
        final = await wait_pod(store, "stubborn", lambda p: p is None or "terminated" in
                               container_state(p))
        assert final is not None
        assert container_state(final)["terminated"]["exitCode"] == 128 + signal.SIGKILL
        assert final["status"]["phase"] == "Failed"
        await wait_pod(store, "stubborn", lambda p: p is None)
        assert not group_alive(pids["stubborn"])
        with pytest.raises(ApiError) as info:
            kubelet.log_provider("default", "stubborn")
        assert info.value.code == 404
        store.delete(PODS, "default", "waiting-gpu")  # completed: removed at once
        await wait_pod(store, "waiting-gpu", lambda p: p is None)
        async with asyncio.timeout(5):
            while list(tmp_path.iterdir()):  # pod directories (with secrets) are removed
                await asyncio.sleep(0.02)


@pytest.mark.timeout(30)
async def test_failures_are_reported_like_a_real_kubelet(tmp_path: Path) -> None:
    async with running_cluster([NodeConfig("n0")], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        store.create(PODS, "default", pod("bad-image", image="example.org/does-not-exist:1"))
        store.create(PODS, "default", pod("crasher", ["python", "-c",
                                                      "print('boom'); raise SystemExit(3)"],
                                          restart="Always"))
        store.create(PODS, "default", pod("no-binary", ["no-such-command-xyz", "--flag"]))
        store.create(PODS, "default", pod("ok", ["python", "-c", "print('fine')"]))

        p = await wait_pod(store, "bad-image", lambda p: waiting_reason(p) == "ErrImagePull")
        assert container_state(p)["waiting"]["message"].endswith(
            'failed to resolve reference "example.org/does-not-exist:1": '
            'example.org/does-not-exist:1: not found')
        p = await wait_pod(store, "bad-image", lambda p: waiting_reason(p) == "ImagePullBackOff")
        assert container_state(p)["waiting"]["message"] == (
            'Back-off pulling image "example.org/does-not-exist:1"')
        assert p["status"]["phase"] == "Pending"
        failed = [e["message"] for e in events_for(store, "bad-image", "Failed")]
        assert "Error: ErrImagePull" in failed and "Error: ImagePullBackOff" in failed
        assert events_for(store, "bad-image", "BackOff")

        p = await wait_pod(store, "crasher", lambda p: waiting_reason(p) == "CrashLoopBackOff"
                           and p["status"]["containerStatuses"][0]["restartCount"] >= 2)
        cs = p["status"]["containerStatuses"][0]
        assert cs["lastState"]["terminated"]["exitCode"] == 3
        assert cs["lastState"]["terminated"]["reason"] == "Error"
        assert cs["state"]["waiting"]["message"].startswith("back-off ")
        assert "restarting failed container=main pod=crasher_default(" in \
            cs["state"]["waiting"]["message"]
        assert p["status"]["phase"] == "Running"
        assert kubelet.log_provider("default", "crasher") == "boom\n"
        assert kubelet.log_provider("default", "crasher", previous=True) == "boom\n"
        (backoff,) = events_for(store, "crasher", "BackOff")
        assert backoff["type"] == "Warning"
        counts = []
        async with asyncio.timeout(10):
            while True:
                cs = store.get(PODS, "default", "crasher")["status"]["containerStatuses"][0]
                counts.append(cs["restartCount"])
                if cs["restartCount"] >= 4:
                    break
                await wait_pod(store, "crasher", lambda p, n=cs["restartCount"]: bool(
                    p and p["status"]["containerStatuses"][0]["restartCount"] > n))
        assert counts == sorted(counts)

        p = await wait_pod(store, "no-binary",
                           lambda p: bool(p and p["status"].get("phase") == "Failed"))
        term = container_state(p)["terminated"]
        assert term["exitCode"] == 128 and term["reason"] == "StartError"
        assert 'exec: "no-such-command-xyz": executable file not found in $PATH' in \
            term["message"]

        p = await wait_pod(store, "ok", lambda p: bool(p and p["status"].get("phase")
                                                        == "Succeeded"))
        assert kubelet.log_provider("default", "ok") == "fine\n"
        with pytest.raises(ApiError) as info:
            kubelet.log_provider("default", "ok", previous=True)
        assert info.value.code == 400
        with pytest.raises(ApiError) as info:
            kubelet.log_provider("default", "ok", "sidecar")
        assert info.value.message == "container sidecar is not valid for pod ok"
        with pytest.raises(ApiError) as info:
            kubelet.log_provider("default", "bad-image")
        assert "is waiting to start: " in info.value.message


@pytest.mark.timeout(30)
async def test_missing_secret_waits_then_starts_when_created(tmp_path: Path) -> None:
    async with running_cluster([NodeConfig("n0")], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        store.create(PODS, "default", pod("needs-secret", [
            "python", "-c", "import os; print(os.environ['TOKEN'])"], container={
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {
                    "name": "late", "key": "token"}}}]}))
        p = await wait_pod(store, "needs-secret",
                           lambda p: waiting_reason(p) == "CreateContainerConfigError")
        assert container_state(p)["waiting"]["message"] == 'secret "late" not found'
        assert p["status"]["phase"] == "Pending"
        store.create(SECRETS, "default", {"metadata": {"name": "late"},
                                          "stringData": {"token": "finally"}})
        await wait_pod(store, "needs-secret",
                       lambda p: bool(p and p["status"].get("phase") == "Succeeded"))
        assert kubelet.log_provider("default", "needs-secret") == "finally\n"

        store.create(CONFIGMAPS, "default", {"metadata": {"name": "cfg"}, "data": {"x": "1"}})
        store.create(PODS, "default", pod("mounts-cm", [
            "python", "-c", "import sys; print(open(sys.argv[1]).read())", "/cfg/x"], container={
                "volumeMounts": [{"name": "c", "mountPath": "/cfg"}]},
            volumes=[{"name": "c", "configMap": {"name": "cfg"}}]))
        p = await wait_pod(store, "mounts-cm", lambda p: bool(
            p and p["status"].get("phase") in ("Succeeded", "Failed")))
        assert p["status"]["phase"] == "Succeeded", kubelet.log_provider("default", "mounts-cm")
        assert kubelet.log_provider("default", "mounts-cm") == "1\n"


@pytest.mark.timeout(30)
async def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    async with running_cluster([NodeConfig("n0")], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        store.create(PODS, "default", pod("sleeper", restart="Always"))
        await wait_pod(store, "sleeper", lambda p: bool(p and "running" in container_state(p)))
        pid = kubelet.pod_processes("default", "sleeper")["main"]
        await kubelet.stop()
        assert not group_alive(pid)
        assert not list(tmp_path.iterdir())
        # Stopping twice (the fixture's finally) is harmless.
        await kubelet.stop()


@pytest.mark.timeout(30)
async def test_init_containers_run_first_and_can_fail_the_pod(tmp_path: Path) -> None:
    write = "import sys; open(sys.argv[1], 'w').write('from init')"
    read = "import sys; print(open(sys.argv[1]).read())"
    async with running_cluster([NodeConfig("n0")], tmp_path) as c:
        store, kubelet = c.store, c.kubelet
        assert kubelet is not None
        mounts = [{"name": "work", "mountPath": "/work"}]
        body = pod("with-init", ["python", "-c", read, "/work/msg"],
                   container={"volumeMounts": mounts},
                   volumes=[{"name": "work", "emptyDir": {}}],
                   initContainers=[{"name": "prepare", "image": "python:3.11",
                                    "command": ["python", "-c", write, "/work/msg"],
                                    "volumeMounts": mounts}])
        store.create(PODS, "default", body)
        p = await wait_pod(store, "with-init", lambda p: bool(
            p and p["status"].get("phase") in ("Succeeded", "Failed")))
        assert p["status"]["phase"] == "Succeeded"
        (init,) = p["status"]["initContainerStatuses"]
        assert init["name"] == "prepare"
        assert init["state"]["terminated"]["reason"] == "Completed"
        conds = {x["type"]: x["status"] for x in p["status"]["conditions"]}
        assert conds["Initialized"] == "True"
        assert kubelet.log_provider("default", "with-init") == "from init\n"
        assert kubelet.log_provider("default", "with-init", "prepare") == ""

        failing = pod("init-fails", ["python", "-c", "print('never')"],
                      initContainers=[{"name": "check", "image": "python:3.11",
                                       "command": ["python", "-c", "raise SystemExit(2)"]}])
        store.create(PODS, "default", failing)
        p = await wait_pod(store, "init-fails", lambda p: bool(
            p and p["status"].get("phase") == "Failed"))
        (init,) = p["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 2
        assert container_state(p)["waiting"]["reason"] == "PodInitializing"
        initialized = next(x for x in p["status"]["conditions"] if x["type"] == "Initialized")
        assert initialized["status"] == "False"
        assert initialized["message"] == "containers with incomplete status: [check]"
        with pytest.raises(ApiError) as info:
            kubelet.log_provider("default", "init-fails")
        assert "is waiting to start: PodInitializing" in info.value.message
