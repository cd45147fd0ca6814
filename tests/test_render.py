"""render_kernel and the views and env policy it stands on.

The rendered Pod and Secret are checked against the Kubernetes API's own schemas
(kubernetes_validate, strict), the JupyterKernel against our CRD, so "valid" means what the API
server will say, not what this test assumes.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import KernelProvisionerFactory

from elastic_kernels.kube.resources import (
    DurationError,
    KernelSpecView,
    KernelView,
    ResourceError,
    TemplateView,
    format_duration,
    format_timestamp,
    freeze,
    is_label_key,
    parse_duration,
    parse_timestamp,
    sanitize_label_value,
)
from elastic_kernels.provisioner.envpolicy import (
    ClientEnvError,
    decide_client_env,
    filter_client_env,
)
from elastic_kernels.provisioner.render import (
    KERNEL_PORTS,
    KEY_FILE,
    KEY_MOUNT_DIR,
    KernelOwner,
    RenderError,
    RenderRequest,
    connection_info,
    render_kernel,
    with_owner,
)

ROOT = Path(__file__).resolve().parent.parent
KERNEL_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
KEY = b"9f1c2d3e4b5a69788796a5b4c3d2e1f0"
NS = "kernels"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def example(name: str) -> dict[str, Any]:
    for path in ROOT.glob("kernelspecs/python-*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["metadata"]["name"] == name:
                doc["metadata"]["namespace"] = NS
                return doc
    raise LookupError(name)


def spec_view(name: str = "python-gpu", **spec_changes: Any) -> KernelSpecView:
    doc = example(name)
    doc["spec"].update(spec_changes)
    return KernelSpecView.from_object(doc)


def template_view(name: str = "gpu", **pod_changes: Any) -> TemplateView:
    doc = example(name)
    doc["spec"]["pod"].update(pod_changes)
    return TemplateView.from_object(doc)


def request(**changes: Any) -> RenderRequest:
    fields: dict[str, Any] = {
        "kernel_id": KERNEL_ID,
        "namespace": NS,
        "user": "alice",
        "spec": spec_view(),
        "template": template_view(),
        "key": KEY,
        "gateway_id": "gateway-0",
    }
    fields.update(changes)
    return RenderRequest(**fields)


def container(rendered: Any) -> dict[str, Any]:
    [c] = rendered.pod["spec"]["containers"]
    return c


def env_of(rendered: Any) -> dict[str, Any]:
    entries = container(rendered)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "each variable appears once"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in entries}


def crd_validator(kind_file: str) -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((ROOT / "deploy/crds" / kind_file).read_text())

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("anyOf", None)
            out["type"] = ["integer", "string"]
        if "properties" in out:
            out["properties"] = {k: convert(v) for k, v in out["properties"].items()}
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        for key in ("items", "additionalProperties"):
            if isinstance(out.get(key), dict):
                out[key] = convert(out[key])
        return out

    schema = convert(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    checker = jsonschema.Draft4Validator.FORMAT_CHECKER
    return jsonschema.Draft4Validator(schema, format_checker=checker)


# --- objects the API server accepts --------------------------------------------------------------


@pytest.mark.parametrize("spec_name,template_name", [("python-gpu", "gpu"), ("python-cpu", "cpu"),
                                                     ("python-cpu", None)])
def test_rendered_objects_are_valid_kubernetes_objects(
    spec_name: str, template_name: str | None
) -> None:
    spec = spec_view(spec_name)
    if template_name is None:
        spec = dataclasses.replace(spec, template_name=None)
    rendered = render_kernel(request(
        spec=spec,
        template=template_view(template_name) if template_name else None,
        owner=KernelOwner(f"kernel-{KERNEL_ID}", "6d1f5a44-8f0e-4c52-9d0b-1f3c5b2a7e90"),
        client_env={"KERNEL_EXPERIMENT_NAME": "run 7"},
    ))
    assert kubernetes_validate.validate(rendered.pod, "1.37", strict=True)
    assert kubernetes_validate.validate(rendered.secret, "1.37", strict=True)
    kernel = {**rendered.kernel, "status": rendered.kernel_status}
    errors = [e.message for e in crd_validator("jupyterkernels.yaml").iter_errors(kernel)]
    assert errors == []
    view = KernelView.from_object(kernel)
    assert (view.kernel_id, view.user, view.kernel_spec, view.gateway) == (
        KERNEL_ID, "alice", spec_name, "gateway-0"
    )
    assert (view.phase, view.restart_count, view.pod_name) == ("Pending", 0, f"kernel-{KERNEL_ID}")
    assert dict(view.client_env) == {"KERNEL_EXPERIMENT_NAME": "run 7"}


# --- resources and placement ---------------------------------------------------------------------


def test_gpu_count_is_the_limit_and_the_request() -> None:
    rendered = render_kernel(request())
    resources = container(rendered)["resources"]
    assert resources == {
        "requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
    }
    assert rendered.kernel_status["gpus"] == 1


def test_gpu_count_given_only_as_request_is_also_the_limit() -> None:
    spec = spec_view(resources={"requests": {"nvidia.com/gpu": "2", "cpu": 2}})
    assert spec.gpus == 2
    resources = container(render_kernel(request(spec=spec)))["resources"]
    assert resources == {"requests": {"cpu": "2", "nvidia.com/gpu": "2"},
                         "limits": {"nvidia.com/gpu": "2"}}


def test_cpu_kernel_holds_no_gpu() -> None:
    rendered = render_kernel(request(spec=spec_view("python-cpu"), template=template_view("cpu")))
    resources = container(rendered)["resources"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert "nvidia.com/gpu" not in resources["limits"]
    assert rendered.kernel_status["gpus"] == 0


@pytest.mark.parametrize("gpus", ["0.5", "1k", "2Gi"])
def test_gpu_count_must_be_whole(gpus: str) -> None:
    with pytest.raises(ResourceError, match=r"nvidia.com/gpu.*whole number"):
        spec_view(resources={"limits": {"nvidia.com/gpu": gpus}})


def test_gpu_request_and_limit_must_agree() -> None:
    with pytest.raises(ResourceError, match="differ"):
        spec_view(resources={"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 2}})


def test_template_places_the_pod() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu-model", "operator": "In", "values": ["a100", "h100"]}]}]}}}
    template = template_view(
        affinity=affinity,
        priorityClassName="kernels-high",
        runtimeClassName="nvidia",
        imagePullSecrets=[{"name": "registry"}],
        volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}}],
        volumeMounts=[{"name": "home", "mountPath": "/home/jovyan"}],
    )
    pod_spec = render_kernel(request(template=template)).pod["spec"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod_spec["affinity"] == affinity
    assert pod_spec["priorityClassName"] == "kernels-high"
    assert pod_spec["runtimeClassName"] == "nvidia"
    assert pod_spec["imagePullSecrets"] == [{"name": "registry"}]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["fsGroup"] == 100
    assert pod_spec["terminationGracePeriodSeconds"] == 10
    assert [v["name"] for v in pod_spec["volumes"]] == ["home", "elastic-kernel-key"]
    [c] = pod_spec["containers"]
    assert c["volumeMounts"][0] == {"name": "home", "mountPath": "/home/jovyan"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}}


def test_pod_defaults_without_template() -> None:
    spec = dataclasses.replace(spec_view("python-cpu"), template_name=None)
    pod_spec = render_kernel(request(spec=spec, template=None)).pod["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod_spec
    assert pod_spec["terminationGracePeriodSeconds"] == 5
    for absent in ("nodeSelector", "tolerations", "affinity",
                   "priorityClassName", "runtimeClassName", "imagePullSecrets"):
        assert absent not in pod_spec
    # Restricted without a template: non-root, RuntimeDefault seccomp, no escalation, no caps.
    assert pod_spec["securityContext"] == {"runAsNonRoot": True, "fsGroup": 100,
                                           "seccompProfile": {"type": "RuntimeDefault"}}
    assert "runAsUser" not in pod_spec["securityContext"]  # the image's numeric USER decides
    assert pod_spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_template_security_context_overrides_the_defaults_field_by_field() -> None:
    template = template_view(
        securityContext={"runAsUser": 2000, "fsGroup": 2000},
        containerSecurityContext={"readOnlyRootFilesystem": True,
                                  "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
    )
    pod_spec = render_kernel(request(template=template)).pod["spec"]
    assert pod_spec["securityContext"] == {"runAsNonRoot": True, "fsGroup": 2000, "runAsUser": 2000,
                                           "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod_spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    # An explicit opt-out is the template's to make (a restricted namespace then refuses it).
    opted_out = template_view(securityContext={"runAsNonRoot": False})
    pod_spec = render_kernel(request(template=opted_out)).pod["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is False
    # An empty template securityContext keeps every default.
    empty = template_view(securityContext={}, containerSecurityContext={})
    pod_spec = render_kernel(request(template=empty)).pod["spec"]
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_cpu_kernels_see_no_gpus_and_gpu_kernels_get_theirs_from_the_device_plugin() -> None:
    cpu = env_of(render_kernel(request(spec=spec_view("python-cpu"),
                                       template=template_view("cpu"))))
    assert cpu["NVIDIA_VISIBLE_DEVICES"] == "void"
    gpu = env_of(render_kernel(request()))
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu
    zero = spec_view("python-gpu", resources={"limits": {"nvidia.com/gpu": 0}})
    assert env_of(render_kernel(request(spec=zero)))["NVIDIA_VISIBLE_DEVICES"] == "void"
    # Admin env cannot hand a CPU kernel the node's GPUs.
    spec = spec_view("python-cpu", env={"NVIDIA_VISIBLE_DEVICES": "all"})
    template = template_view("cpu", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    assert env_of(render_kernel(request(spec=spec, template=template)))[
        "NVIDIA_VISIBLE_DEVICES"] == "void"


def test_service_account_only_from_the_template() -> None:
    template = template_view(serviceAccountName="kernel-runner")
    pod_spec = render_kernel(request(template=template)).pod["spec"]
    assert pod_spec["serviceAccountName"] == "kernel-runner"
    assert "automountServiceAccountToken" not in pod_spec
    plain = render_kernel(request()).pod["spec"]
    assert plain["automountServiceAccountToken"] is False and "serviceAccountName" not in plain


def test_template_must_be_the_one_the_spec_names() -> None:
    with pytest.raises(RenderError, match="uses template 'gpu'"):
        render_kernel(request(template=template_view("cpu")))
    with pytest.raises(RenderError, match="uses template 'gpu'"):
        render_kernel(request(template=None))


def test_template_cannot_take_the_key_volume_or_mount() -> None:
    with pytest.raises(RenderError, match="reserved"):
        render_kernel(request(template=template_view(
            volumes=[{"name": "elastic-kernel-key", "emptyDir": {}}])))
    with pytest.raises(RenderError, match="reserved"):
        render_kernel(request(template=template_view(
            volumes=[{"name": "x", "emptyDir": {}}],
            volumeMounts=[{"name": "x", "mountPath": KEY_MOUNT_DIR + "/"}])))


# --- names, labels, annotations ------------------------------------------------------------------


def test_names_across_restarts() -> None:
    first = render_kernel(request())
    third = render_kernel(request(restart_count=2))
    assert first.kernel_name == third.kernel_name == f"kernel-{KERNEL_ID}"
    assert first.secret_name == third.secret_name == f"kernel-{KERNEL_ID}-key"
    assert first.pod_name == f"kernel-{KERNEL_ID}"
    assert third.pod_name == f"kernel-{KERNEL_ID}-r2"
    assert third.pod["metadata"]["annotations"]["elastic.jupyter.org/restart-count"] == "2"
    assert third.kernel_status == {"phase": "Pending", "gpus": 1, "restartCount": 2,
                                   "podName": f"kernel-{KERNEL_ID}-r2",
                                   "gpuResource": "nvidia.com/gpu"}
    volume = third.pod["spec"]["volumes"][-1]
    assert volume["secret"]["secretName"] == f"kernel-{KERNEL_ID}-key"
    for obj in (first.kernel, first.secret, first.pod):
        assert obj["metadata"]["namespace"] == NS


def test_labels_ours_win_over_the_template() -> None:
    doc = example("gpu")
    doc["spec"]["labels"] = {"team": "vision", "app.kubernetes.io/managed-by": "someone-else",
                             "elastic.jupyter.org/kernel-id": "forged"}
    doc["spec"]["annotations"] = {"elastic.jupyter.org/user": "mallory", "note": "x"}
    rendered = render_kernel(request(template=TemplateView.from_object(doc)))
    labels = rendered.pod["metadata"]["labels"]
    assert labels == {
        "team": "vision",
        "app.kubernetes.io/managed-by": "elastic-kernels",
        "app.kubernetes.io/component": "kernel",
        "elastic.jupyter.org/kernel-id": KERNEL_ID,
        "elastic.jupyter.org/kernelspec": "python-gpu",
        "elastic.jupyter.org/user": "alice",
    }
    annotations = rendered.pod["metadata"]["annotations"]
    assert annotations["elastic.jupyter.org/user"] == "alice"
    assert annotations["note"] == "x"
    # the record and the Secret carry only our labels
    assert "team" not in rendered.kernel["metadata"]["labels"]
    assert rendered.secret["metadata"]["labels"] == rendered.kernel["metadata"]["labels"]


HOSTILE_USERS = [
    "a@b.com",
    "A@B.COM",
    "a-b.com",
    "x" * 300,
    "x" * 299 + "y",
    "josé",
    "jose",
    "日本語ユーザー",
    "-leading-and-trailing-",
    "alice/../../etc",
    "alice\", \"admin\": true, \"x\": \"",
    "{{ .Values.admin }}",
    "$(EK_KEY_FILE)",
    "a" * 63,
    "a" * 64,
]


def test_user_labels_are_valid_distinct_and_exact_elsewhere() -> None:
    labels = {}
    for user in HOSTILE_USERS:
        rendered = render_kernel(request(user=user))
        value = rendered.pod["metadata"]["labels"]["elastic.jupyter.org/user"]
        assert len(value) <= 63 and LABEL_VALUE.match(value), (user, value)
        assert rendered.pod["metadata"]["annotations"]["elastic.jupyter.org/user"] == user
        assert rendered.kernel["spec"]["user"] == user
        assert rendered.kernel["metadata"]["annotations"]["elastic.jupyter.org/user"] == user
        labels[user] = value
        assert kubernetes_validate.validate(rendered.pod, "1.37", strict=True)
    assert len(set(labels.values())) == len(HOSTILE_USERS), "no two users share a label"
    assert labels["a-b.com"] == "a-b.com" and labels["a" * 63] == "a" * 63
    assert labels["a@b.com"].startswith("a-b.com-")
    assert labels["josé"].startswith("jos-")


@pytest.mark.parametrize("user", ["", "a\nb", "tab\there", "nul\x00", "x" * 1025, "\u2028"])
def test_unusable_user_names_are_refused(user: str) -> None:
    with pytest.raises(RenderError, match="user"):
        render_kernel(request(user=user))


def test_label_helpers() -> None:
    assert sanitize_label_value("") == ""
    assert sanitize_label_value("...") != "..." and LABEL_VALUE.match(sanitize_label_value("..."))
    assert is_label_key("elastic.jupyter.org/user") and is_label_key("team")
    for bad in ("Bad Key", "UPPER.example/x", "", "a/b/c"):
        assert not is_label_key(bad)


# --- the launcher contract and the key -----------------------------------------------------------


def test_container_runs_the_launcher_with_the_contract_env() -> None:
    rendered = render_kernel(request())
    c = container(rendered)
    assert c["name"] == "kernel"
    assert c["image"] == "ghcr.io/elastic-kernels/kernel-python-gpu:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["elastic-kernel-launcher", "--", "python", "-m", "ipykernel_launcher",
                            "-f", "{connection_file}"]
    env = env_of(rendered)
    assert env["EK_KERNEL_ID"] == KERNEL_ID
    assert env["EK_KERNEL_NAME"] == "python-gpu"
    assert env["EK_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    assert {k: env[f"EK_{k.upper()}_PORT"] for k in KERNEL_PORTS} == {
        "shell": "52700", "iopub": "52701", "stdin": "52702", "control": "52703", "hb": "52704"
    }
    assert env["EK_TRANSPORT"] == "tcp"
    assert env["EK_SIGNATURE_SCHEME"] == "hmac-sha256"
    assert env["EK_KEY_FILE"] == KEY_FILE == "/var/run/elastic-kernels/key/key"
    assert env["KERNEL_ID"] == KERNEL_ID
    assert env["KERNEL_USERNAME"] == "alice"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert c["volumeMounts"][-1] == {"name": "elastic-kernel-key",
                                     "mountPath": "/var/run/elastic-kernels/key", "readOnly": True}
    assert rendered.pod["spec"]["volumes"][-1] == {
        "name": "elastic-kernel-key",
        "secret": {"secretName": f"kernel-{KERNEL_ID}-key", "defaultMode": 0o400,
                   "items": [{"key": "key", "path": "key"}]},
    }


def test_connection_info_matches_the_contract() -> None:
    info = connection_info("10.1.2.3", KEY, "python-gpu")
    assert info == {"ip": "10.1.2.3", "transport": "tcp", "shell_port": 52700, "iopub_port": 52701,
                    "stdin_port": 52702, "control_port": 52703, "hb_port": 52704, "key": KEY,
                    "signature_scheme": "hmac-sha256", "kernel_name": "python-gpu"}


def test_key_is_only_in_the_secret() -> None:
    req = request()
    rendered = render_kernel(req)
    assert rendered.secret["data"] == {"key": base64.b64encode(KEY).decode()}
    assert base64.b64decode(rendered.secret["data"]["key"]) == KEY
    assert rendered.secret["type"] == "Opaque" and rendered.secret["immutable"] is True
    assert "stringData" not in rendered.secret
    encoded = base64.b64encode(KEY).decode()
    for public in (rendered.pod, rendered.kernel, rendered.kernel_status):
        text = json.dumps(public)
        assert KEY.decode() not in text and encoded not in text
    for text in (repr(req), repr(rendered), str(rendered)):
        assert KEY.decode() not in text and encoded not in text


@pytest.mark.parametrize("key", [b"", b"short", b"has space in the key 1234",
                                 "str-not-bytes-123456", b"\xff" * 32, b"x" * 2000])
def test_unusable_keys_are_refused(key: Any) -> None:
    with pytest.raises(RenderError, match="key"):
        render_kernel(request(key=key))


# --- ownership --------------------------------------------------------------------------------


def test_without_owner_nothing_is_owned_yet() -> None:
    rendered = render_kernel(request())
    for obj in (rendered.kernel, rendered.secret, rendered.pod):
        assert "ownerReferences" not in obj["metadata"]


def test_owner_references_make_the_kernel_record_the_controller() -> None:
    uid = "6d1f5a44-8f0e-4c52-9d0b-1f3c5b2a7e90"
    expected = [{"apiVersion": "elastic.jupyter.org/v1alpha1", "kind": "JupyterKernel",
                 "name": f"kernel-{KERNEL_ID}", "uid": uid, "controller": True,
                 "blockOwnerDeletion": True}]
    owned = render_kernel(request(owner=KernelOwner(f"kernel-{KERNEL_ID}", uid)))
    assert owned.secret["metadata"]["ownerReferences"] == expected
    assert owned.pod["metadata"]["ownerReferences"] == expected
    assert "ownerReferences" not in owned.kernel["metadata"]

    # The usual order: render, create the record, then own the rest with what the server returned.
    rendered = render_kernel(request())
    created_metadata = {**rendered.kernel["metadata"], "uid": uid, "resourceVersion": "7"}
    assert with_owner(rendered.pod, created_metadata) == owned.pod
    assert with_owner(rendered.secret, {"name": f"kernel-{KERNEL_ID}", "uid": uid}) == owned.secret
    assert "ownerReferences" not in rendered.pod["metadata"], "with_owner copies"
    # a second owner replaces the controller instead of adding one
    again = with_owner(owned.pod, KernelOwner(f"kernel-{KERNEL_ID}", "other-uid"))
    assert [r["uid"] for r in again["metadata"]["ownerReferences"]] == ["other-uid"]


def test_owner_must_be_this_kernels_record() -> None:
    with pytest.raises(RenderError, match="not this kernel"):
        render_kernel(request(owner=KernelOwner("kernel-someone-else", "uid")))
    with pytest.raises(RenderError, match="uid"):
        with_owner({"metadata": {}}, {"name": f"kernel-{KERNEL_ID}"})


@pytest.mark.parametrize("changes,match", [
    ({"kernel_id": "not-a-uuid"}, "kernel id"),
    ({"kernel_id": KERNEL_ID.upper()}, "kernel id"),
    ({"namespace": "Kernels"}, "namespace"),
    ({"namespace": "a" * 64}, "namespace"),
    ({"restart_count": -1}, "restart_count"),
    ({"restart_count": True}, "restart_count"),
    ({"gateway_id": "g" * 254}, "gateway"),
])
def test_invalid_requests_are_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RenderError, match=match):
        render_kernel(request(**changes))


# --- client environment ------------------------------------------------------------------------


def test_allowed_client_env_reaches_the_kernel_and_the_record() -> None:
    rendered = render_kernel(request(client_env={
        "KERNEL_EXPERIMENT_NAME": "baseline",
        "JPY_SESSION_NAME": "/home/alice/work/notebook.ipynb",
    }))
    env = env_of(rendered)
    assert env["KERNEL_EXPERIMENT_NAME"] == "baseline"
    assert env["JPY_SESSION_NAME"] == "/home/alice/work/notebook.ipynb"
    assert rendered.kernel["spec"]["clientEnv"] == {
        "JPY_SESSION_NAME": "/home/alice/work/notebook.ipynb", "KERNEL_EXPERIMENT_NAME": "baseline"
    }
    assert rendered.dropped_env == ()


def test_refused_client_env_changes_nothing() -> None:
    hostile = {
        "KERNEL_NAMESPACE": "kube-system",
        "KERNEL_SERVICE_ACCOUNT_NAME": "cluster-admin",
        "KERNEL_IMAGE": "evil/image:latest",
        "KERNEL_WORKING_DIR": "/etc",
        "KERNEL_VOLUMES": '[{"name": "root", "hostPath": {"path": "/"}}]',
        "KERNEL_UID": "0",
        "KERNEL_USERNAME": "root",
        "KERNEL_ID": "00000000-0000-0000-0000-000000000000",
        "KERNEL_NOT_LISTED": "x",
        "EK_KEY_FILE": "/etc/shadow",
        "EK_IP": "0.0.0.0",
        "PATH": "/tmp/evil",
        "LD_PRELOAD": "/tmp/evil.so",
        "PYTHONPATH": "/tmp",
    }
    baseline = render_kernel(request())
    rendered = render_kernel(request(client_env=hostile))
    assert rendered.pod == baseline.pod
    assert rendered.kernel == baseline.kernel
    assert set(rendered.dropped_env) == set(hostile)
    assert env_of(rendered)["KERNEL_USERNAME"] == "alice"


def test_reserved_names_stay_reserved_even_when_an_admin_lists_them() -> None:
    spec = spec_view(allowedClientEnv=["KERNEL_USERNAME", "KERNEL_NAMESPACE", "KERNEL_ID",
                                       "KERNEL_IMAGE", "KERNEL_WORKING_DIR", "KERNEL_TEAM"])
    decision = decide_client_env({"KERNEL_USERNAME": "root", "KERNEL_NAMESPACE": "kube-system",
                                  "KERNEL_ID": "x", "KERNEL_IMAGE": "evil:1",
                                  "KERNEL_WORKING_DIR": "/etc", "KERNEL_TEAM": "vision"}, spec)
    assert dict(decision.accepted) == {"KERNEL_TEAM": "vision"}
    rendered = render_kernel(request(spec=spec, client_env={"KERNEL_IMAGE": "evil:1",
                                                            "KERNEL_USERNAME": "root"}))
    assert container(rendered)["image"] == spec.image
    assert env_of(rendered)["KERNEL_USERNAME"] == "alice"


@pytest.mark.parametrize("value,reason", [
    ("a\x00b", "U+0000"),
    ("line\nbreak", "U+000A"),
    ("carriage\rreturn", "U+000D"),
    ("tab\tbed", "U+0009"),
    ("esc\x1b[31m", "U+001B"),
    ("sep\u2028arator", "U+2028"),
    ("x" * 4097, "longer than 4096"),
    (42, "must be a string"),
    (None, "must be a string"),
])
def test_malformed_values_of_allowed_names_are_refused(value: Any, reason: str) -> None:
    with pytest.raises(ClientEnvError) as refused:
        render_kernel(request(client_env={"KERNEL_EXPERIMENT_NAME": value}))
    assert refused.value.name == "KERNEL_EXPERIMENT_NAME"
    assert "KERNEL_EXPERIMENT_NAME" in str(refused.value) and reason in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_malformed_values_of_dropped_names_do_not_matter() -> None:
    accepted = filter_client_env({"KERNEL_OTHER": "a\x00b", "PATH": 5}, spec_view())
    assert accepted == {}


def test_values_are_data_not_fields() -> None:
    """YAML, JSON and $(VAR) in values stay text in one env entry; nothing else changes."""
    sneaky = {
        "KERNEL_EXPERIMENT_NAME": '"}], "hostNetwork": true, "x": [{"a": "',
        "JPY_SESSION_NAME": "x: y &anchor {privileged: true} $(EK_KEY_FILE) $$(X)",
    }
    baseline = render_kernel(request())
    rendered = render_kernel(request(client_env=sneaky))
    env = env_of(rendered)
    assert env["KERNEL_EXPERIMENT_NAME"] == sneaky["KERNEL_EXPERIMENT_NAME"].replace("$", "$$")
    # the kubelet expands $(VAR): doubling $ makes it print the client's text literally
    assert env["JPY_SESSION_NAME"] == "x: y &anchor {privileged: true} $$(EK_KEY_FILE) $$$$(X)"
    assert rendered.kernel["spec"]["clientEnv"] == sneaky  # the record keeps what was sent
    stripped = copy.deepcopy(rendered.pod)
    stripped["spec"]["containers"][0]["env"] = [
        e for e in stripped["spec"]["containers"][0]["env"] if e["name"] not in sneaky
    ]
    assert stripped == baseline.pod
    assert "hostNetwork" not in rendered.pod["spec"]
    assert kubernetes_validate.validate(rendered.pod, "1.37", strict=True)


def test_env_precedence_ours_client_spec_template() -> None:
    template = template_view(env=[
        {"name": "SHARED", "value": "template"},
        {"name": "ONLY_TEMPLATE", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "token"}}},
        {"name": "KERNEL_EXPERIMENT_NAME", "value": "template"},
        {"name": "EK_KEY_FILE", "value": "/forged"},
    ])
    spec = spec_view(env={"SHARED": "spec", "KERNEL_EXPERIMENT_NAME": "spec", "EK_IP": "1.2.3.4",
                          "KERNEL_USERNAME": "spec-user"})
    rendered = render_kernel(request(spec=spec, template=template,
                                     client_env={"KERNEL_EXPERIMENT_NAME": "client"}))
    env = env_of(rendered)
    assert env["SHARED"] == "spec"
    assert env["ONLY_TEMPLATE"] == {"secretKeyRef": {"name": "s3", "key": "token"}}
    assert env["KERNEL_EXPERIMENT_NAME"] == "client"
    assert env["EK_KEY_FILE"] == KEY_FILE
    assert env["EK_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    assert env["KERNEL_USERNAME"] == "alice"
    names = [e["name"] for e in container(rendered)["env"]]
    assert names.index("EK_KEY_FILE") < names.index("SHARED"), "ours first, for $(VAR) references"


def test_client_overrides_are_opt_in() -> None:
    env = {"KERNEL_WORKING_DIR": "/home/jovyan/project",
           "KERNEL_IMAGE": "registry.local:5000/team/py:1.2"}
    closed = render_kernel(request(client_env=env))
    assert "workingDir" not in container(closed)
    assert container(closed)["image"] == "ghcr.io/elastic-kernels/kernel-python-gpu:0.1.0"

    spec = spec_view(clientOverrides={"workingDir": True, "image": True})
    opened = render_kernel(request(spec=spec, client_env=env))
    assert container(opened)["workingDir"] == "/home/jovyan/project"
    assert container(opened)["image"] == "registry.local:5000/team/py:1.2"
    assert opened.pod["metadata"]["namespace"] == NS
    # an empty working dir (sent by notebook servers without one) is ignored, not an error
    empty = render_kernel(request(spec=spec, client_env={"KERNEL_WORKING_DIR": ""}))
    assert "workingDir" not in container(empty)


@pytest.mark.parametrize("name,value", [
    ("KERNEL_WORKING_DIR", "relative/path"),
    ("KERNEL_IMAGE", "evil image; rm -rf /"),
    ("KERNEL_IMAGE", "UPPER/Case"),
])
def test_bad_override_values_are_refused(name: str, value: str) -> None:
    spec = spec_view(clientOverrides={"workingDir": True, "image": True})
    with pytest.raises(ClientEnvError, match=name):
        render_kernel(request(spec=spec, client_env={name: value}))


def test_client_env_must_be_a_mapping() -> None:
    with pytest.raises(ClientEnvError, match="object"):
        decide_client_env(["KERNEL_X=1"], spec_view())  # type: ignore[arg-type]
    assert filter_client_env(None, spec_view()) == {}


# --- purity ------------------------------------------------------------------------------------


def test_render_is_pure() -> None:
    spec_doc, template_doc = example("python-gpu"), example("gpu")
    spec_before, template_before = copy.deepcopy(spec_doc), copy.deepcopy(template_doc)
    client_env = {"KERNEL_EXPERIMENT_NAME": "a", "KERNEL_NAMESPACE": "b"}
    env_before = copy.deepcopy(client_env)
    req = request(spec=KernelSpecView.from_object(spec_doc),
                  template=TemplateView.from_object(template_doc), client_env=client_env,
                  owner=KernelOwner(f"kernel-{KERNEL_ID}", "uid-1"))
    req_before = repr(req)

    first = render_kernel(req)
    second = render_kernel(req)
    assert first == second
    assert (spec_doc, template_doc, client_env) == (spec_before, template_before, env_before)
    assert repr(req) == req_before

    # Outputs share nothing with each other or with the views.
    first.pod["spec"]["tolerations"][0]["key"] = "changed"
    first.pod["spec"]["containers"][0]["env"].clear()
    first.pod["metadata"]["labels"]["x"] = "y"
    first.kernel["spec"]["clientEnv"]["KERNEL_EXPERIMENT_NAME"] = "changed"
    third = render_kernel(req)
    assert third == second
    assert req.template is not None and req.template.tolerations[0]["key"] == "nvidia.com/gpu"

    # The views built from the CRs did not keep references to the CR dicts either.
    spec_doc["spec"]["argv"].append("--evil")
    template_doc["spec"]["pod"]["nodeSelector"]["x"] = "y"
    assert render_kernel(req) == second


# --- views and helpers -------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("30m", 1800), ("2s", 2), ("1h30m", 5400), ("1.5h", 5400), ("7d", 604800), ("250ms", 0.25),
    ("0", 0), ("0s", 0), ("1h1h", 7200), ("10m30s", 630),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "30x", "-5m", "1 h", "h", "1.h", "m30", " 5m", "5m ",
                                  "1e3s", "1" * 70 + "s"])
def test_parse_duration_errors_are_clear(text: str) -> None:
    with pytest.raises(DurationError, match="duration"):
        parse_duration(text)


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(DurationError, match="string"):
        parse_duration(600)  # type: ignore[arg-type]


def test_format_duration_round_trips() -> None:
    for seconds in (0, 1, 59, 60, 3600, 5400, 90061, 604800):
        assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(5400) == "1h30m"


def test_timestamps() -> None:
    for text in ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123456789Z",
                 "2024-05-01T14:00:00+02:00"):
        value = parse_timestamp(text)
        assert value.utcoffset().total_seconds() == 0
        assert format_timestamp(value) == "2024-05-01T12:00:00Z"
    for bad in ("yesterday", "2024-13-01T00:00:00Z", "2024-05-01 12:00"):
        with pytest.raises(ValueError, match="timestamp"):
            parse_timestamp(bad)


def test_a_version_of_a_spec_is_parsed_once() -> None:
    from elastic_kernels.kube import resources as R

    doc = example("python-gpu")
    doc["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="41")
    first = KernelSpecView.from_object(doc)
    assert KernelSpecView.from_object(copy.deepcopy(doc)) is first  # the same version: shared
    changed = copy.deepcopy(doc)
    changed["metadata"]["resourceVersion"] = "42"
    changed["spec"]["displayName"] = "Renamed"
    assert KernelSpecView.from_object(changed).display_name == "Renamed"  # a new version
    R.set_gpu_flavors(R.gpu_flavors())  # what counts as a GPU was configured again
    assert KernelSpecView.from_object(doc) is not first
    # A broken version is reported every time it is read, never remembered as a view.
    broken = copy.deepcopy(doc)
    broken["metadata"]["resourceVersion"] = "43"
    broken["spec"]["argv"] = []
    for _ in range(2):
        with pytest.raises(ResourceError, match="spec.argv"):
            KernelSpecView.from_object(broken)


def test_spec_view_errors_name_the_object_and_field() -> None:
    doc = example("python-gpu")
    doc["spec"]["culling"]["idleTimeout"] = "soon"
    with pytest.raises(ResourceError) as error:
        KernelSpecView.from_object(doc)
    assert str(error.value).startswith(
        f"JupyterKernelSpec {NS}/python-gpu: spec.culling.idleTimeout:")
    assert "30m" in str(error.value)


def test_argv_must_have_the_placeholder() -> None:
    with pytest.raises(ResourceError, match=r"\{connection_file\}"):
        spec_view(argv=["python", "-m", "ipykernel_launcher"])


def test_wrong_kind_is_refused() -> None:
    with pytest.raises(ResourceError, match="expected JupyterKernelSpec"):
        KernelSpecView.from_object(example("gpu"))
    with pytest.raises(ResourceError, match="not an object"):
        KernelSpecView.from_object(["not", "a", "dict"])  # type: ignore[arg-type]


def test_views_are_frozen() -> None:
    spec = spec_view()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["X"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        template_view().security_context["privileged"] = True  # type: ignore[index]
    assert freeze({"a": [1, {"b": 2}]})["a"][1]["b"] == 2


def test_to_jupyter_kernelspec_selects_our_provisioner() -> None:
    doc = example("python-gpu")
    doc["spec"]["metadata"]["kernel_provisioner"] = {"provisioner_name": "local-provisioner"}
    spec = KernelSpecView.from_object(doc)
    served = spec.to_jupyter_kernelspec()
    assert served["argv"] == ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert served["display_name"] == "Python on GPU"
    assert served["language"] == "python"
    assert served["interrupt_mode"] == "message"
    assert served["env"] == {"PYTHONDONTWRITEBYTECODE": "1"}
    metadata = served["metadata"]
    assert metadata["debugger"] is True
    assert metadata["kernel_provisioner"] == {"provisioner_name": "elastic-kernel-provisioner",
                                              "config": {}}
    elastic = metadata["elastic"]
    assert elastic["gpus"] == 1
    assert elastic["image"] == "ghcr.io/elastic-kernels/kernel-python-gpu:0.1.0"
    assert elastic["culling"]["idle_timeout"] == 1800
    json.dumps(served)  # what the REST API sends
    # jupyter_client accepts it, and finds our provisioner by that name (an installed entry point)
    kernel_spec = KernelSpec(resource_dir="", name=spec.name, **served)
    assert KernelProvisionerFactory.instance().is_provisioner_available(kernel_spec)


def test_kernel_view_reads_status() -> None:
    kernel_id = str(uuid.UUID(int=7))
    obj = {
        "apiVersion": "elastic.jupyter.org/v1alpha1", "kind": "JupyterKernel",
        "metadata": {"name": f"kernel-{kernel_id}", "namespace": NS, "uid": "u",
                     "resourceVersion": "12", "creationTimestamp": "2024-05-01T11:00:00Z",
                     "deletionTimestamp": "2024-05-01T13:00:00Z"},
        "spec": {"kernelId": kernel_id, "user": "bob", "kernelSpec": "python-cpu"},
        "status": {"phase": "Running", "podIP": "127.0.0.9", "node": "node-1", "gpus": 0,
                   "lastActivity": "2024-05-01T12:30:00Z", "restartCount": 3, "queuePosition": 0,
                   "leaseRenewedAt": "2024-05-01T12:31:00.5Z"},
    }
    view = KernelView.from_object(obj)
    assert view.phase == "Running" and view.pod_ip == "127.0.0.9" and view.restart_count == 3
    assert format_timestamp(view.last_activity) == "2024-05-01T12:30:00Z"
    assert view.lease_renewed_at is not None and view.created_at is not None
    assert view.deleting and view.queue_position == 0 and view.resource_version == "12"
    del obj["status"]
    bare = KernelView.from_object(obj)
    assert (bare.phase, bare.gpus, bare.last_activity) == ("Pending", 0, None)
