"""The Helm chart, rendered and installed by real Helm, equals the kustomize install.

Helm here is the Helm v4 Go library shipped in the ``helm-sdkpy`` wheel (``helm`` itself is on
neither PyPI, npm nor Debian 12). It has no client-only "template" action, so the chart is
installed -- CRDs from ``crds/``, then the templates -- into the local cluster, which serves every
kind the chart creates; the release's ``manifest`` is what ``helm template`` prints. The release
record stays in memory (``HELM_DRIVER=memory``, see ``helmrun.py``).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import Kubectl
from .session import kernel_session, local_pod, wait_serving
from .manifests import (
    CHART,
    CRDS,
    DEPLOY,
    UNKNOWN_CLUSTER_SCOPED,
    NAMESPACE,
    JSON,
    by_ident,
    differences,
    cr_problems,
    crd_schemas,
    find,
    is_custom,
    kustomize,
    load_docs,
    pod_spec,
    validate_builtin,
)

pytestmark = [pytest.mark.timeout(120)]


def test_helm_library_is_installed() -> None:
    """`make test` installs it; without it the chart tests below fail on import, not skip."""
    assert importlib.util.find_spec("helm_sdkpy") is not None, (
        "helm-sdkpy (Helm's Go library) is not installed: "
        "pip install --ignore-requires-python --no-deps helm-sdkpy==0.1.32")

REPO = DEPLOY.parent
POLICY = "elastic-kernels-kernel-pods"
HELM_ONLY_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/version", "helm.sh/chart"}


async def helm(kubeconfig: Path, namespace: str, workdir: Path, *, values: JSON | None = None,
               release: str = "elastic-kernels", lint: bool = False,
               upgrade_values: JSON | None = None) -> tuple[int, Any, str]:
    """Run helmrun.py; (exit code, parsed JSON result or None, stderr)."""
    home = workdir / "helm-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HELM_DRIVER": "memory", "HOME": str(home),
           "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_DATA_HOME": str(home / "data")}
    argv = [sys.executable, "-m", "tests.deploy.helmrun", "--kubeconfig", str(kubeconfig),
            "--namespace", namespace, "--chart", str(CHART), "--release", release,
            "--values", json.dumps(values or {})]
    if lint:
        argv.append("--lint")
    if upgrade_values is not None:
        argv += ["--upgrade-values", json.dumps(upgrade_values)]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    result = json.loads(out) if proc.returncode == 0 and out else None
    return int(proc.returncode or 0), result, err.decode(errors="replace")


async def install(cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path, namespace: str,
                  values: JSON | None = None) -> list[JSON]:
    """Install the chart into a new namespace; the rendered objects."""
    await kubectl("create", "namespace", namespace)
    code, result, err = await helm(cluster.kubeconfig_path, namespace, tmp_path, values=values,
                                   release=f"ek-{namespace}")
    assert code == 0, err[-3000:]
    assert result["info"]["status"] == "deployed"
    return load_docs(result["manifest"], f"helm manifest ({namespace})")


def _without_helm_labels(doc: JSON) -> JSON:
    doc = copy.deepcopy(doc)
    holders = [doc.get("metadata") or {}]
    if doc.get("kind") in ("Deployment", "CronJob"):
        if doc["kind"] == "Deployment":
            holders.append(doc["spec"]["template"]["metadata"])
        else:
            holders.append(doc["spec"]["jobTemplate"]["metadata"])
            holders.append(doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"])
    for meta in holders:
        labels = meta.get("labels") or {}
        for key in HELM_ONLY_LABELS:
            labels.pop(key, None)
    (doc.get("metadata") or {}).get("annotations", {}).pop("helm.sh/resource-policy", None)
    if not (doc.get("metadata") or {}).get("annotations", True):
        doc["metadata"].pop("annotations")
    return doc


def _base_policy_names(doc: JSON) -> JSON:
    """The chart's per-namespace admission policy and binding names as the kustomize base's."""
    if doc["kind"] not in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        return doc
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = POLICY
    if doc["kind"] == "ValidatingAdmissionPolicyBinding":
        doc["spec"]["policyName"] = POLICY
    return doc


def _pod_template_labels(doc: JSON) -> dict:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]


async def test_helm_lint_passes(tmp_path: Path) -> None:
    code, result, err = await helm(tmp_path / "no-kubeconfig", NAMESPACE, tmp_path, lint=True)
    assert code == 0, err
    assert not result["Errors"], result
    # Severity 1 is INFO (e.g. "icon is recommended"); warnings (2) and errors (3+) are not ok.
    assert all(m["Severity"] <= 1 for m in result["Messages"]), result["Messages"]


async def test_chart_installs_the_same_objects_as_kustomize(
        install_cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path,
        base_docs: list[JSON]) -> None:
    rendered = await install(install_cluster, kubectl, tmp_path, NAMESPACE,
                             {"namespace": {"create": False}})

    # The reference: the kustomize base with the kernelspecs component, minus what Helm handles
    # differently -- CRDs (installed from the chart's crds/, compared below) and the Namespace
    # (Helm installs into an existing or --create-namespace namespace).
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        f"resources:\n  - {rel}\ncomponents:\n  - {rel}/components/kernelspecs\n")
    reference = [d for d in kustomize(overlay)
                 if d["kind"] not in ("CustomResourceDefinition", "Namespace")]
    for doc in reference:  # the namespace kustomize gives cluster-scoped kinds it does not know
        if doc["kind"] in UNKNOWN_CLUSTER_SCOPED:
            doc["metadata"].pop("namespace")

    # Helm adds the token Secrets and the snapshot key it generates (see
    # test_token_secrets_are_generated_and_kept), and names the cluster-scoped admission policy
    # per namespace (one pair per release).
    generated = [d for d in rendered if d["kind"] == "Secret"]
    assert sorted(d["metadata"]["name"] for d in generated) == [
        "elastic-kernels-gateway-token", "elastic-kernels-notebook-token",
        "elastic-kernels-snapshot-key"]
    rendered = [_base_policy_names(d) for d in rendered if d["kind"] != "Secret"]
    ours, theirs = by_ident(reference), by_ident(rendered)
    assert set(theirs) == set(ours)
    schemas = crd_schemas()
    for key, expected in ours.items():
        got = theirs[key]
        if is_custom(got):
            assert cr_problems(got, schemas) == []
        else:
            validate_builtin(got)
        # Helm's labels come on top of the same labels, everywhere (selectors are untouched).
        for a, b in ((expected, got), *(
                ((_pod_template_labels(expected), _pod_template_labels(got)),)
                if got["kind"] in ("Deployment", "CronJob") else ())):
            labels_a = a.get("metadata", {}).get("labels", {}) if "metadata" in a else a
            labels_b = b.get("metadata", {}).get("labels", {}) if "metadata" in b else b
            assert labels_a.items() <= labels_b.items(), key
        assert differences(expected, _without_helm_labels(got)) == [], key

    # The CRDs Helm installed are the files in deploy/crds.
    crds = await kubectl.json("get", "crd")
    names = sorted(c["metadata"]["name"] for c in crds["items"])
    assert names == sorted(d["metadata"]["name"] for p in CRDS.glob("*.yaml")
                           for d in load_docs(p.read_text()))
    for link in (CHART / "crds").iterdir():
        assert link.resolve().read_bytes() == (CRDS / link.name).read_bytes()

    # And the cluster holds what Helm rendered.
    stored = await kubectl.json("get", "-n", NAMESPACE,
                                "deployments,cronjobs,roles,jupyterkernelspecs")
    assert sorted((i["kind"], i["metadata"]["name"]) for i in stored["items"]) == sorted(
        (k, n) for k, _, n in theirs if k in ("Deployment", "CronJob", "Role",
                                              "JupyterKernelSpec"))


async def test_values_shape_the_install(install_cluster: LocalCluster, kubectl: Kubectl,
                                        tmp_path: Path) -> None:
    docs = await install(install_cluster, kubectl, tmp_path, "team-a", {
        "images": {"gateway": {"repository": "registry.example/ek/gateway", "tag": "1.2.3"},
                   "notebook": {"repository": "registry.example/ek/notebook", "tag": "1.2.3"}},
        "culling": {"idleTimeout": "2h", "maxAge": 86400, "orphanGrace": "10m",
                    "schedule": "*/10 * * * *"},
        "quotas": {"namespaceGPUs": 8},
        "kernelspecs": {"install": ["python-gpu"],
                        "images": {"python-gpu": "registry.example/ek/kernel-gpu:9.9.9"}},
        "notebook": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "gateway": {"replicas": 3, "config": {"ElasticGatewayApp.zmq_recheck_interval": 0.25,
                                              "CullingDefaults.reclaim_after": 900},
                    # Snapshots in an object store: no claim, no volume, the URL in both.
                    "snapshots": {"url": "s3://bucket/elastic-kernels"}},
    })
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert not any("notebook" in name for _, name in kinds)
    assert ("NetworkPolicy", "elastic-kernels-kernels") not in kinds
    assert {n for k, n in kinds if k.startswith("JupyterKernel")} == {"python-gpu", "gpu"}
    spec = find(docs, "JupyterKernelSpec", "python-gpu")
    assert spec["spec"]["image"] == "registry.example/ek/kernel-gpu:9.9.9"
    assert all(d["metadata"]["namespace"] == "team-a" for d in docs
               if not d["kind"].startswith("ValidatingAdmissionPolicy"))
    binding = find(docs, "ValidatingAdmissionPolicyBinding", f"{POLICY}-team-a")
    assert binding["spec"]["policyName"] == f"{POLICY}-team-a"
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "team-a"}}

    gateway = find(docs, "Deployment", "elastic-kernels-gateway")
    assert gateway["spec"]["replicas"] == 3
    (container,) = pod_spec(gateway)["containers"]
    assert container["image"] == "registry.example/ek/gateway:1.2.3"
    assert container["args"][-2:] == ["--CullingDefaults.reclaim_after=900",
                                      "--ElasticGatewayApp.zmq_recheck_interval=0.25"]
    assert "--ElasticMappingKernelManager.snapshot_store=s3://bucket/elastic-kernels" in \
        container["args"]
    assert not any("persistentVolumeClaim" in v for v in pod_spec(gateway)["volumes"])
    assert ("PersistentVolumeClaim", "elastic-kernels-snapshots") not in kinds
    binding = find(docs, "RoleBinding", "elastic-kernels-gateway")
    assert binding["subjects"][0]["namespace"] == "team-a"

    cron = find(docs, "CronJob", "elastic-kernels-cull")
    assert cron["spec"]["schedule"] == "*/10 * * * *"
    (cull,) = pod_spec(cron)["containers"]
    assert cull["image"] == "registry.example/ek/gateway:1.2.3"
    from elastic_kernels.cull import build_parser
    args = build_parser().parse_args([a.replace("$(POD_NAMESPACE)", "team-a")
                                      for a in cull["args"]])
    assert (args.idle_timeout, args.max_age, args.orphan_grace) == (7200, 86400, 600)
    assert args.snapshot_store == "s3://bucket/elastic-kernels"
    assert not any("persistentVolumeClaim" in v for v in pod_spec(cron)["volumes"])

    quota = find(docs, "ResourceQuota", "elastic-kernels-gpus")
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "8"}
    for doc in docs:
        if not is_custom(doc):
            validate_builtin(doc)


@pytest.mark.parametrize("users_secret", ["team-users", ""])
async def test_the_users_secret_is_one_name_in_the_gateway_and_its_role(
        install_cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path,
        users_secret: str) -> None:
    # (With no users Secret, this install also turns snapshots off: see the end.)
    docs = await install(install_cluster, kubectl, tmp_path, "team-b",
                         {"gateway": {"usersSecret": users_secret,
                                      "snapshots": {"enabled": bool(users_secret)}}})
    (container,) = pod_spec(find(docs, "Deployment", "elastic-kernels-gateway"))["containers"]
    flags = [a for a in container["args"] if a.startswith("--users-secret")]
    rules = find(docs, "Role", "elastic-kernels-gateway")["rules"]
    named = [r for r in rules if r.get("resourceNames")]
    if users_secret:
        assert flags == [f"--users-secret={users_secret}"]
        assert named == [{"apiGroups": [""], "resources": ["secrets"],
                          "resourceNames": [users_secret], "verbs": ["get", "list", "watch"]}]
    else:
        assert flags == [] and named == []
    # Every other rule is the kustomize base's.
    base = find(kustomize(DEPLOY), "Role", "elastic-kernels-gateway")["rules"]
    assert [r for r in rules if not r.get("resourceNames")] == [
        r for r in base if not r.get("resourceNames")]
    # snapshots.enabled false: no store, no key, no claim (Suspend kernelspecs cull as Delete).
    snapshot_words = ("snapshot", "elastic-kernels-snapshots")
    text = json.dumps([d for d in docs if d["kind"] in ("Deployment", "CronJob",
                                                        "PersistentVolumeClaim", "Secret")])
    assert any(w in text for w in snapshot_words) is bool(users_secret)


@pytest.mark.parametrize("values, words", [
    ({"gateway": {"replicas": 0}}, "replicas"),
    ({"kernelspecs": {"install": ["python-tpu"]}}, "/kernelspecs/install/0"),
    ({"culling": {"idleTimeout": "soon"}}, "idleTimeout"),
    ({"gatway": {"replicas": 2}}, "gatway"),
    ({"gateway": {"usersSecret": "Users_Secret"}}, "usersSecret"),
    ({"gateway": {"snapshots": {"accessModes": ["ReadOnlyMany"]}}}, "accessModes"),
])
async def test_bad_values_are_refused_with_the_field(
        install_cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path, values: JSON,
        words: str) -> None:
    code, _, err = await helm(install_cluster.kubeconfig_path, NAMESPACE, tmp_path,
                              values=values)
    assert code != 0
    assert words in err, err[-2000:]


SERVICE_MONITOR_CRD: JSON = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "servicemonitors", "singular": "servicemonitor",
                       "kind": "ServiceMonitor", "listKind": "ServiceMonitorList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}


def _token(doc: JSON) -> str:
    return base64.b64decode(doc["data"]["token"]).decode()


async def test_token_secrets_are_generated_and_kept(
        install_cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    """No Secret to create by hand: random tokens on install, the same ones after an upgrade,
    still there after uninstall; a Secret the admin made is used and left alone."""
    namespace = "team-t"
    await kubectl("create", "namespace", namespace)
    await kubectl("create", "secret", "generic", "-n", namespace,
                  "elastic-kernels-notebook-token", "--from-literal=token=the-admins-own")
    code, result, err = await helm(install_cluster.kubeconfig_path, namespace, tmp_path,
                                   release="ek-t", upgrade_values={"gateway": {"replicas": 3}})
    assert code == 0, err[-3000:]
    # The namespace came without Pod Security labels; the notes say so, with the command.
    notes = result["install"]["info"]["notes"]
    assert "did NOT label namespace team-t" in notes, notes
    assert "kubectl label --overwrite namespace team-t" in notes
    assert "pod-security.kubernetes.io/enforce=restricted" in notes
    installed = load_docs(result["install"]["manifest"], "install")
    upgraded = load_docs(result["upgrade"]["manifest"], "upgrade")
    (secret, key) = sorted((d for d in installed if d["kind"] == "Secret"),
                           key=lambda d: d["metadata"]["name"])
    assert secret["metadata"]["name"] == "elastic-kernels-gateway-token"
    # The snapshot key: generated the same way (64 characters, at least the 32 bytes the
    # gateway requires), kept across upgrades and on uninstall.
    assert key["metadata"]["name"] == "elastic-kernels-snapshot-key"
    assert key["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key_value = base64.b64decode(key["data"]["key"]).decode()
    assert len(key_value) == 64 and key_value.isalnum() and key_value != _token(secret)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    token = _token(secret)
    assert len(token) == 64 and token.isalnum()
    (again, key_again) = sorted((d for d in upgraded if d["kind"] == "Secret"),
                                key=lambda d: d["metadata"]["name"])
    assert _token(again) == token
    assert key_again["data"]["key"] == key["data"]["key"]
    assert find(upgraded, "Deployment", "elastic-kernels-gateway")["spec"]["replicas"] == 3
    stored = await kubectl.json("get", "secret", "-n", namespace, "elastic-kernels-gateway-token")
    assert _token(stored) == token
    mine = await kubectl.json("get", "secret", "-n", namespace, "elastic-kernels-notebook-token")
    assert _token(mine) == "the-admins-own"


async def test_gateway_pod_options(install_cluster: LocalCluster, kubectl: Kubectl,
                                   tmp_path: Path) -> None:
    env = [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}]
    volume = {"name": "ca", "configMap": {"name": "corp-ca"}}
    mount = {"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "node-role", "operator": "In", "values": ["system"]}]}]}}}
    # The Prometheus Operator's kind, schema-less: the chart's object only needs to be stored.
    await kubectl.apply_docs([SERVICE_MONITOR_CRD])
    await kubectl("wait", "--for=condition=Established", "--timeout=30s",
                  "crd/servicemonitors.monitoring.coreos.com")
    docs = await install(install_cluster, kubectl, tmp_path, "team-o", {
        "global": {"imageRegistry": "ignored.example"},
        "gateway": {"snapshots": {"existingClaim": "team-snapshots",
                                  "mountPath": "/srv/snapshots"},
                    "extraEnv": env, "extraVolumes": [volume], "extraVolumeMounts": [mount],
                    "podAnnotations": {"example.com/scrape": "true"}, "affinity": affinity,
                    "priorityClassName": "system-cluster-critical", "listenAddress": "::",
                    "podDisruptionBudget": {"maxUnavailable": 2}},
        "metrics": {"serviceMonitor": {"enabled": True, "tokenSecret": "prom-token",
                                       "labels": {"release": "prometheus"}}},
        "networkPolicy": {"kernelEgress": {"deniedCIDRs": ["169.254.169.254/32"],
                                           "extraRules": [{"to": [{"podSelector": {
                                               "matchLabels": {"app": "minio"}}}]}]}},
    })
    gateway = find(docs, "Deployment", "elastic-kernels-gateway")
    template = gateway["spec"]["template"]
    assert template["metadata"]["annotations"] == {"example.com/scrape": "true"}
    spec = template["spec"]
    assert spec["affinity"] == affinity
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert volume in spec["volumes"]
    (container,) = spec["containers"]
    assert env[0] in container["env"] and mount in container["volumeMounts"]
    assert "--ip=::" in container["args"]
    # An existing claim for the snapshots: mounted where asked, the chart makes none.
    assert not any(d["kind"] == "PersistentVolumeClaim" and "snapshots" in d["metadata"]["name"]
                   for d in docs)
    for workload in (gateway, find(docs, "CronJob", "elastic-kernels-cull")):
        wspec = pod_spec(workload)
        (claim,) = [v for v in wspec["volumes"] if "persistentVolumeClaim" in v]
        assert claim["persistentVolumeClaim"] == {"claimName": "team-snapshots"}
        assert {"name": claim["name"], "mountPath": "/srv/snapshots"} in \
            wspec["containers"][0]["volumeMounts"]
    assert "--ElasticMappingKernelManager.snapshot_store=/srv/snapshots" in container["args"]
    pdb = find(docs, "PodDisruptionBudget", "elastic-kernels-gateway")
    assert pdb["spec"]["maxUnavailable"] == 2 and "minAvailable" not in pdb["spec"]

    monitor = find(docs, "ServiceMonitor", "elastic-kernels-gateway")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = find(docs, "Service", "elastic-kernels-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    assert endpoint["authorization"]["credentials"] == {"name": "prom-token", "key": "token"}

    egress = find(docs, "NetworkPolicy", "elastic-kernels-kernel-egress")["spec"]["egress"]
    assert egress[1]["to"][0]["ipBlock"]["except"] == ["169.254.169.254/32"]
    assert egress[2] == {"to": [{"podSelector": {"matchLabels": {"app": "minio"}}}]}
    for doc in docs:
        if not is_custom(doc) and doc["kind"] != "ServiceMonitor":
            validate_builtin(doc)


async def test_the_chart_onto_a_restricted_namespace_runs_a_gateway(
        install_cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path) -> None:
    """The chart's own namespace (namespace.create) is restricted, and its gateway pod -- the
    Deployment's template, with the generated token -- is admitted there and serves."""
    namespace = "team-r"
    code, result, err = await helm(install_cluster.kubeconfig_path, namespace, tmp_path,
                                   values={"namespace": {"create": True}}, release="ek-r")
    assert code == 0, err[-3000:]
    assert "WARNING" not in result["info"]["notes"]
    ns = await kubectl.json("get", "namespace", namespace)
    for mode in ("enforce", "warn", "audit"):
        assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"
    docs = load_docs(result["manifest"], "helm manifest")
    for kind, name in (("Deployment", "elastic-kernels-gateway"),
                       ("Deployment", "elastic-kernels-notebook"),
                       ("CronJob", "elastic-kernels-cull")):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-probe", "namespace": namespace},
               "spec": pod_spec(find(docs, kind, name))}
        out = await kubectl.run("create", "--dry-run=server", "-f", "-",
                                stdin=json.dumps(pod))
        assert out.returncode == 0, out.stderr
        assert "Warning" not in out.stderr, out.stderr

    # The gateway runs there with the token the chart generated, and serves a kernel: the
    # kernel pod meets Pod Security and the admission policy too. No manual step.
    secret = await kubectl.json("get", "secret", "-n", namespace,
                                "elastic-kernels-gateway-token")
    token = _token(secret)
    name = "elastic-kernels-gateway-0"
    await kubectl.apply_docs([local_pod(find(docs, "Deployment", "elastic-kernels-gateway"),
                                        name, namespace)])
    try:
        await kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Running",
                      f"pod/{name}", "--timeout=60s")
        pod = await kubectl.json("get", "-n", namespace, "pod", name)
        url = f"http://{pod['status']['podIP']}:8888"
        await wait_serving(url)
        facts = await kernel_session(url, token, "python-cpu")
        assert facts["first"][0] == "42"
    finally:
        await kubectl("delete", "-n", namespace, "pod", name, "--wait=true", "--timeout=60s")
