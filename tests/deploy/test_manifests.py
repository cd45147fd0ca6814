"""The install manifests: parsed, schema-valid, and consistent with each other and with the code.

Nothing here needs a cluster: ``kubectl kustomize`` builds the base, the Kubernetes 1.37 schemas
(strict) and our CRDs' schemas judge every object, and the cross-checks compare the manifests
with the constants the code uses (kernel labels and ports, class paths, command-line flags).
"""

from __future__ import annotations

import copy
import importlib
import ipaddress
import json
import os
import re
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest

from elastic_kernels.cull import build_parser as cull_parser
from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.provisioner.render import KERNEL_PORTS

from .manifests import (
    DEPLOY,
    KERNELSPECS,
    NAMESPACE,
    REPO,
    JSON,
    by_ident,
    cr_problems,
    crd_schemas,
    find,
    is_custom,
    kustomize,
    load_docs,
    manifest_files,
    pod_spec,
    validate_builtin,
)

pytestmark = pytest.mark.timeout(60)

GATEWAY_LABELS = {"app.kubernetes.io/name": "elastic-kernels",
                  "app.kubernetes.io/component": "gateway"}
EXPECTED_BASE = {
    ("Namespace", "", NAMESPACE),
    ("CustomResourceDefinition", "", "jupyterkernels.elastic.jupyter.org"),
    ("CustomResourceDefinition", "", "jupyterkernelspecs.elastic.jupyter.org"),
    ("CustomResourceDefinition", "", "jupyterkerneltemplates.elastic.jupyter.org"),
    *((kind, NAMESPACE, "elastic-kernels-gateway") for kind in (
        "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget")),
    *((kind, NAMESPACE, "elastic-kernels-cull") for kind in (
        "ServiceAccount", "Role", "RoleBinding", "CronJob")),
    *((kind, NAMESPACE, "elastic-kernels-notebook") for kind in (
        "ServiceAccount", "Deployment", "Service")),
    ("PersistentVolumeClaim", NAMESPACE, "elastic-kernels-notebooks"),
    ("PersistentVolumeClaim", NAMESPACE, "elastic-kernels-snapshots"),
    ("NetworkPolicy", NAMESPACE, "elastic-kernels-kernels"),
    ("NetworkPolicy", NAMESPACE, "elastic-kernels-kernel-egress"),
    ("ValidatingAdmissionPolicy", "", "elastic-kernels-kernel-pods"),
    ("ValidatingAdmissionPolicyBinding", "", "elastic-kernels-kernel-pods"),
}


@pytest.fixture(scope="module")
def base() -> list[JSON]:
    return kustomize(DEPLOY)


def _docs_of(path: Path) -> list[JSON]:
    return [d for d in load_docs(path.read_text(), str(path))
            if d.get("kind") not in ("Kustomization", "Component")]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_manifest_file_is_valid(path: Path) -> None:
    docs = load_docs(path.read_text(), str(path))
    assert docs, f"{path} holds no document"
    schemas = crd_schemas()
    for doc in docs:
        if doc.get("kind") in ("Kustomization", "Component"):
            assert str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/")
        elif is_custom(doc):
            assert cr_problems(doc, schemas) == [], (path, doc["metadata"]["name"])
        else:
            validate_builtin(doc)


def test_the_judges_refuse_broken_objects(base: list[JSON]) -> None:
    """The validators above are not vacuous: each refuses a typical mistake."""
    deployment = copy.deepcopy(find(base, "Deployment", "elastic-kernels-gateway"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment)
    role = copy.deepcopy(find(base, "Role", "elastic-kernels-gateway"))
    role["rules"][0]["verbs"] = "get"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(role)

    schemas = crd_schemas()
    spec = next(d for d in _docs_of(KERNELSPECS / "python-gpu.yaml")
                if d["kind"] == "JupyterKernelSpec")
    typo = copy.deepcopy(spec)
    typo["spec"]["culling"]["idleTimout"] = "30m"
    assert any("idleTimout" in p for p in cr_problems(typo, schemas))
    wrong = copy.deepcopy(spec)
    wrong["spec"]["argv"] = "python -m ipykernel"
    assert cr_problems(wrong, schemas)


def test_kustomize_base_has_every_object_valid(base: list[JSON]) -> None:
    objects = by_ident(base)
    assert set(objects) == EXPECTED_BASE
    for doc in base:
        validate_builtin(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "elastic-kernels"
    for binding in (d for d in base if d["kind"] == "RoleBinding"):
        name = binding["metadata"]["name"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                        "namespace": NAMESPACE}]


def test_workloads_are_locked_down(base: list[JSON]) -> None:
    for kind, name in (("Deployment", "elastic-kernels-gateway"),
                       ("Deployment", "elastic-kernels-notebook"),
                       ("CronJob", "elastic-kernels-cull")):
        spec = pod_spec(find(base, kind, name))
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000
        assert ctx["runAsGroup"] == 100
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            image = container["image"]
            assert re.fullmatch(r"ghcr\.io/elastic-kernels/[a-z-]+:\d+\.\d+\.\d+", image), image
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False
            assert c["readOnlyRootFilesystem"] is True
            assert c["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"] and container["resources"]["limits"]
            # A read-only root needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
            # Tokens come from Secrets, never from the command line.
            assert not any(a.startswith(("--token", "--GatewayClient.auth_token",
                                         "--IdentityProvider.token"))
                           for a in container.get("args", []))
    notebook = pod_spec(find(base, "Deployment", "elastic-kernels-notebook"))
    assert notebook["automountServiceAccountToken"] is False


def test_gateway_deployment(base: list[JSON]) -> None:
    deployment = find(base, "Deployment", "elastic-kernels-gateway")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = deployment["spec"]["template"]
    assert GATEWAY_LABELS.items() <= template["metadata"]["labels"].items()
    spec = template["spec"]
    assert spec["serviceAccountName"] == "elastic-kernels-gateway"
    assert spec["terminationGracePeriodSeconds"] >= 10
    (container,) = spec["containers"]
    assert container["command"] == ["elastic-kernels", "gateway"]
    # Every interface, so the Service and `kubectl port-forward` (the pod's loopback) both work.
    assert "--ip=0.0.0.0" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ELASTIC_KERNELS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "elastic-kernels-gateway-token", "key": "token"}
    port = container["ports"][0]
    assert port == {"name": "http", "containerPort": 8888, "protocol": "TCP"}
    for probe in ("readinessProbe", "livenessProbe"):
        # GET /api is the gateway's unauthenticated endpoint (see test_gateway_probe_endpoint).
        assert container[probe]["httpGet"] == {"path": "/api", "port": "http"}

    service = find(base, "Service", "elastic-kernels-gateway")
    assert service["spec"]["selector"] == GATEWAY_LABELS
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = find(base, "PodDisruptionBudget", "elastic-kernels-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == GATEWAY_LABELS
    # maxUnavailable: a drain can always proceed, one replica at a time.
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": GATEWAY_LABELS}}


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), a)
            for a in args]


def test_gateway_command_line_is_understood_by_the_gateway(base: list[JSON]) -> None:
    """Every flag parses, and every class it names imports (a typo would crash-loop the pod)."""
    container = pod_spec(find(base, "Deployment", "elastic-kernels-gateway"))["containers"][0]
    args = _expand(container["args"], {"POD_NAMESPACE": NAMESPACE,
                                       "POD_NAME": "elastic-kernels-gateway-abc"})
    app = ElasticGatewayApp()
    app.parse_command_line(args)
    assert app.ip == "0.0.0.0" and app.port == 8888
    assert app.namespace == NAMESPACE
    assert app.gateway_id == "elastic-kernels-gateway-abc"
    # Kernels run in pods with the gateway's defaults; the manifest does not override them.
    assert "kernel_manager_class" not in app.config.ServerApp
    # No kubeconfig: in a pod the gateway configures itself from its service account.
    assert not any(a.startswith("--kubeconfig") for a in args)


SNAPSHOT_KEY_SECRET = "elastic-kernels-snapshot-key"


def test_snapshots_store_and_key(base: list[JSON]) -> None:
    """Suspend's store is the snapshots claim, mounted by the gateway and the cull job at the
    path they are told; its key is a Secret mounted as a file into the gateway only (never an
    environment value, never the cull job's), which the gateway reads as its key file."""
    claim = find(base, "PersistentVolumeClaim", "elastic-kernels-snapshots")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    gateway = pod_spec(find(base, "Deployment", "elastic-kernels-gateway"))
    cull = pod_spec(find(base, "CronJob", "elastic-kernels-cull"))
    (container,) = gateway["containers"]
    app = ElasticGatewayApp()
    app.parse_command_line(_expand(container["args"], {"POD_NAMESPACE": NAMESPACE,
                                                       "POD_NAME": "g"}))
    km = app.config.ElasticMappingKernelManager
    store, key_file = km.snapshot_store, km.snapshot_key_file
    (cull_container,) = cull["containers"]
    args = cull_parser().parse_args(_expand(cull_container["args"], {"POD_NAMESPACE": NAMESPACE}))
    assert args.snapshot_store == store
    for spec, c in ((gateway, container), (cull, cull_container)):
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == store]
        assert not mount.get("readOnly")
        assert volumes[mount["name"]]["persistentVolumeClaim"] == {
            "claimName": claim["metadata"]["name"]}
        # Both write as uid 1000 into a volume the kubelet gives group 100.
        assert spec["securityContext"]["fsGroup"] == 100
    volumes = {v["name"]: v for v in gateway["volumes"]}
    (mount,) = [m for m in container["volumeMounts"]
                if key_file.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == SNAPSHOT_KEY_SECRET
    assert {"key": "key", "path": key_file[len(mount["mountPath"]):].strip("/")} in \
        secret["items"]
    assert secret["defaultMode"] == 0o440
    # The key is never an environment value of any workload (nor the cull job's at all).
    for kind, name in (("Deployment", "elastic-kernels-gateway"),
                       ("Deployment", "elastic-kernels-notebook"),
                       ("CronJob", "elastic-kernels-cull")):
        text = json.dumps(pod_spec(find(base, kind, name)))
        if name != "elastic-kernels-gateway":
            assert SNAPSHOT_KEY_SECRET not in text, name
        for c in pod_spec(find(base, kind, name))["containers"]:
            assert SNAPSHOT_KEY_SECRET not in json.dumps(c.get("env", [])), name
            assert "ELASTIC_KERNELS_SNAPSHOT_KEY" not in json.dumps(c.get("env", [])), name


def test_cull_cronjob(base: list[JSON]) -> None:
    cron = find(base, "CronJob", "elastic-kernels-cull")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    assert spec["serviceAccountName"] == "elastic-kernels-cull"
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["command"] == ["elastic-kernels", "cull"]
    args = cull_parser().parse_args(_expand(container["args"], {"POD_NAMESPACE": NAMESPACE}))
    assert args.namespace == NAMESPACE
    assert args.dry_run is False
    assert args.idle_timeout == 24 * 3600 and args.max_age == 7 * 86400
    assert args.orphan_grace == 300


def test_notebook_server_talks_to_the_gateway_service(base: list[JSON]) -> None:
    deployment = find(base, "Deployment", "elastic-kernels-notebook")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["command"] == ["jupyter", "lab"]
    args = container["args"]
    service = find(base, "Service", "elastic-kernels-gateway")
    port = service["spec"]["ports"][0]["port"]
    assert f"--gateway-url=http://{service['metadata']['name']}:{port}" in args
    flag = next(a for a in args if a.startswith("--ServerApp.kernel_websocket_connection_class="))
    module, _, name = flag.split("=", 1)[1].rpartition(".")
    assert hasattr(importlib.import_module(module), name)
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTER_GATEWAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "elastic-kernels-gateway-token", "key": "token"}
    claim = find(base, "PersistentVolumeClaim", "elastic-kernels-notebooks")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # root_dir must exist on a fresh volume: it is the volume's mount point itself.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert f"--ServerApp.root_dir={mounts['home']}" in args


def test_notebook_command_line_is_understood_by_jupyter_server(base: list[JSON],
                                                               tmp_path: Path) -> None:
    """`jupyter lab` hands its argv to jupyter_server's ServerApp; every flag must parse."""
    from jupyter_server.serverapp import ServerApp

    container = pod_spec(find(base, "Deployment", "elastic-kernels-notebook"))["containers"][0]
    args = [a.replace("/home/jovyan", str(tmp_path)) for a in container["args"]]
    app = ServerApp()
    app.parse_command_line(args)
    assert app.ip == "0.0.0.0" and app.open_browser is False
    assert app.config.GatewayClient.url == "http://elastic-kernels-gateway:8888"
    assert app.config.GatewayClient.request_timeout == 660
    assert app.root_dir == str(tmp_path)
    # The status relay the JupyterLab extension reads.
    assert app.jpserver_extensions == {"elastic_kernels.notebook": True}


def test_network_policy_admits_only_gateways_to_kernel_ports(base: list[JSON]) -> None:
    policy = find(base, "NetworkPolicy", "elastic-kernels-kernels")["spec"]
    kernel_labels = dict(part.split("=") for part in R.KERNEL_SELECTOR.split(","))
    assert policy["podSelector"] == {"matchLabels": kernel_labels}
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": GATEWAY_LABELS}}]
    # Each port on its own (several CNIs ignore endPort), exactly the kernel's ports.
    assert rule["ports"] == [{"protocol": "TCP", "port": port}
                             for port in sorted(KERNEL_PORTS.values())]
    # The gateway's pods carry the labels the policy admits.
    gateway = find(base, "Deployment", "elastic-kernels-gateway")
    assert GATEWAY_LABELS.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()


def test_kernel_egress_allows_dns_and_public_addresses_only(base: list[JSON]) -> None:
    policy = find(base, "NetworkPolicy", "elastic-kernels-kernel-egress")["spec"]
    kernel_labels = dict(part.split("=") for part in R.KERNEL_SELECTOR.split(","))
    assert policy["podSelector"] == {"matchLabels": kernel_labels}
    assert policy["policyTypes"] == ["Egress"]
    dns, public = policy["egress"]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    (peer,) = dns["to"]
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert "ports" not in public
    v4, v6 = (p["ipBlock"] for p in public["to"])
    assert v4["cidr"] == "0.0.0.0/0" and v6["cidr"] == "::/0"
    metadata = ipaddress.ip_address("169.254.169.254")
    denied = [ipaddress.ip_network(c) for c in v4["except"]]
    for address in ("169.254.169.254", "10.96.0.1", "172.20.0.5", "192.168.1.1", "100.64.0.10",
                    "127.0.0.1"):
        assert any(ipaddress.ip_address(address) in n for n in denied), address
    assert not any(ipaddress.ip_address("8.8.8.8") in n for n in denied)

    # The component that opens private ranges keeps the metadata address closed.
    docs = kustomize(_overlay(Path(tempfile.mkdtemp()), "resources:\n  - DEPLOY\n"
                              "components:\n  - DEPLOY/components/kernel-egress-private\n"))
    opened = find(docs, "NetworkPolicy", "elastic-kernels-kernel-egress")["spec"]
    v4, v6 = (p["ipBlock"] for p in opened["egress"][1]["to"])
    assert any(metadata in ipaddress.ip_network(c) for c in v4["except"])
    assert not any(ipaddress.ip_address("10.96.0.1") in ipaddress.ip_network(c)
                   for c in v4["except"])
    validate_builtin(find(docs, "NetworkPolicy", "elastic-kernels-kernel-egress"))


def test_kernel_pod_policy_is_bound_to_the_install_namespace(base: list[JSON]) -> None:
    policy = find(base, "ValidatingAdmissionPolicy", "elastic-kernels-kernel-pods")["spec"]
    kernel_labels = dict(part.split("=") for part in R.KERNEL_SELECTOR.split(","))
    assert policy["matchConstraints"]["objectSelector"] == {"matchLabels": kernel_labels}
    assert policy["failurePolicy"] == "Fail"
    binding = find(base, "ValidatingAdmissionPolicyBinding", "elastic-kernels-kernel-pods")["spec"]
    assert binding["validationActions"] == ["Deny"]
    assert binding["matchResources"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    # The ServiceAccounts it keeps kernels from are the install's own.
    text = " ".join(v["expression"] for v in policy["validations"])
    for name in ("elastic-kernels-gateway", "elastic-kernels-cull"):
        assert find(base, "ServiceAccount", name) and f"'{name}'" in text


def test_namespace_is_pod_security_restricted(base: list[JSON]) -> None:
    labels = find(base, "Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def _overlay(tmp_path: Path, body: str) -> Path:
    rel = os.path.relpath(DEPLOY, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(body.replace("DEPLOY", rel))
    return tmp_path


def test_kernelspecs_component_adds_the_example_kernelspecs(tmp_path: Path,
                                                            base: list[JSON]) -> None:
    docs = kustomize(_overlay(tmp_path, "resources:\n  - DEPLOY\n"
                                        "components:\n  - DEPLOY/components/kernelspecs\n"))
    added = {k: v for k, v in by_ident(docs).items() if k not in by_ident(base)}
    assert set(added) == {("JupyterKernelSpec", NAMESPACE, "python-cpu"),
                          ("JupyterKernelSpec", NAMESPACE, "python-gpu"),
                          ("JupyterKernelTemplate", NAMESPACE, "cpu"),
                          ("JupyterKernelTemplate", NAMESPACE, "gpu")}
    schemas = crd_schemas()
    for doc in added.values():
        assert cr_problems(doc, schemas) == []


def test_another_namespace_as_the_admin_guide_says(tmp_path: Path) -> None:
    """The overlay from docs/admin-guide.md moves everything, RoleBinding subjects included."""
    guide = (REPO / "docs" / "admin-guide.md").read_text()
    block = re.search(r"<!-- namespace-overlay -->\s*```yaml\n(.*?)```", guide, re.S)
    assert block, "docs/admin-guide.md lost its namespace overlay example"
    body = block.group(1).replace("../elastic-kernels/deploy", "DEPLOY")
    docs = kustomize(_overlay(tmp_path, body))
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == "Namespace":
            assert meta["name"] == "ml-team"
        elif doc["kind"] == "ValidatingAdmissionPolicyBinding":
            assert doc["spec"]["matchResources"]["namespaceSelector"] == {
                "matchLabels": {"kubernetes.io/metadata.name": "ml-team"}}
        elif doc["kind"] != "CustomResourceDefinition":
            assert meta["namespace"] == "ml-team", doc["kind"]
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == "ml-team"
        validate_builtin(doc) if not is_custom(doc) else None
    assert "elastic-kernels" not in {d["metadata"].get("namespace") for d in docs}
