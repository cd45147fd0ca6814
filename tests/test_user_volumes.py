"""Per-user volumes and the kernel's working directory (issue 14, items 2 and 3).

Pure parts here (names, rendering, the working-dir decision, the launcher's chdir); the end to
end runs on the local cluster are at the bottom: a notebook in a subfolder of the user's volume
starts its kernel there and reads a file beside it; a folder outside the user's volumes starts
at the volume root with the warning in the kernel's status and log.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import NAMESPACES, PODS, KubeClient
from elastic_kernels.kube.resources import ResourceError, TemplateView
from elastic_kernels.kube.slugs import escape_slug, expand, safe_slug, user_slugs
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner.render import RenderError, render_kernel
from elastic_kernels.provisioner.uservolumes import decide_working_dir

from .conftest import GatewayFactory, apply_files, derived_kernelspec
from .gateway.support import KernelWS, api, json_of
from .test_render import KERNEL_ID, ROOT, container, env_of, example, request, spec_view

pytestmark = pytest.mark.timeout(120)

LAUNCHER = ROOT / "launchers" / "elastic-kernel-launcher"

# KubeSpawner's own results (kubespawner/slugs.py at jupyterhub/kubespawner@4161d54:
# safe_slug(name, max_length=48), the {username} of slug_scheme "safe", and escape_slug(name),
# that of slug_scheme "escape"), computed with KubeSpawner's code, not ours.
KUBESPAWNER = [
    ("alice", "alice", "alice"),
    ("Alice.Smith@example.com", "alice-smith-example-com---66da998b",
     "-41lice-2e-53mith-40example-2ecom"),
    ("名前", "x---7ec26292", "-e5-90-8d-e5-89-8d"),
    ("a-b", "a-b", "a-2db"),
    ("a--b", "a-b---90827a2e", "a-2d-2db"),
    ("bob_1", "bob-1---52f89ba9", "bob-5f1"),
    ("1user", "x-1user---b5732d84", "1user"),
    ("user-", "user---b5d4a457", "user-2d"),
    ("x" * 60, "x" * 37 + "---42f2d973", "x" * 60),
    ("Ünïcödé", "n-c-d---39af95d0", "-c3-9cn-c3-afc-c3-b6d-c3-a9"),
    ("a.b", "a-b---2e7336dc", "a-2eb"),
    ("élodie@x.fr", "lodie-x-fr---dc0371b7", "-c3-a9lodie-40x-2efr"),
    ("0", "x-0---5feceb66", "0"),
    ("a" * 48, "a" * 48, "a" * 48),
    ("a" * 49, "a" * 37 + "---8f9bec6a", "a" * 49),
]


@pytest.mark.parametrize("name,safe,escaped", KUBESPAWNER)
def test_usernames_are_written_as_kubespawner_writes_them(name: str, safe: str,
                                                          escaped: str) -> None:
    assert safe_slug(name) == safe
    assert escape_slug(name) == escaped
    assert expand("claim-{username}", user_slugs(name, "safe")) == f"claim-{safe}"
    assert expand("claim-{username}", user_slugs(name, "escape")) == f"claim-{escaped}"
    # z2jh's template for the default server names the same claim.
    assert expand("claim-{username}{servername}", user_slugs(name, "safe")) == f"claim-{safe}"
    assert expand("claim-{user_server}", user_slugs(name, "escape")) == f"claim-{escaped}"


# --- templates -----------------------------------------------------------------------------------


def template_doc(**spec: Any) -> dict[str, Any]:
    doc = example("gpu")
    doc["spec"].update(spec)
    return doc


HOME = {"name": "home", "volume": {"persistentVolumeClaim": {"claimName": "claim-{username}"}},
        "mountPath": "/home/jovyan"}
SHARED = {"name": "shared", "volume": {"persistentVolumeClaim": {"claimName": "shared-home"}},
          "mountPath": "/srv/data", "subPath": "users/{username}", "readOnly": True,
          "notebookPath": "/home/jovyan/data"}


def user_template(*volumes: dict[str, Any], **spec: Any) -> TemplateView:
    return TemplateView.from_object(template_doc(userVolumes=list(volumes), **spec))


def test_user_volumes_are_the_users_and_only_the_users() -> None:
    template = user_template(HOME, SHARED, runAs={"uid": 1000, "gid": 100})
    hostile = {"KERNEL_VOLUMES": '[{"name": "x", "hostPath": {"path": "/"}}]',
               "KERNEL_USERNAME": "bob", "KERNEL_UID": "0", "KERNEL_PVC": "claim-bob"}
    rendered = render_kernel(request(template=template, user="Alice.Smith@example.com",
                                     client_env=hostile))
    pod = rendered.pod["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["home"] == {"name": "home", "persistentVolumeClaim": {
        "claimName": "claim-alice-smith-example-com---66da998b"}}
    assert volumes["shared"]["persistentVolumeClaim"] == {"claimName": "shared-home"}
    mounts = {m["name"]: m for m in container(rendered)["volumeMounts"]}
    assert mounts["home"] == {"name": "home", "mountPath": "/home/jovyan"}
    assert mounts["shared"] == {"name": "shared", "mountPath": "/srv/data",
                                "subPath": "users/alice-smith-example-com---66da998b",
                                "readOnly": True}
    assert "bob" not in json.dumps(rendered.pod) and "hostPath" not in json.dumps(pod)
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["runAsGroup"] == pod["securityContext"]["fsGroup"] == 100
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The legacy scheme, for claims KubeSpawner < 7 made.
    legacy = render_kernel(request(template=user_template(HOME, usernameScheme="escape"),
                                   user="Alice.Smith@example.com"))
    assert {v["name"]: v for v in legacy.pod["spec"]["volumes"]}["home"][
        "persistentVolumeClaim"]["claimName"] == "claim--41lice-2e-53mith-40example-2ecom"


def test_any_volume_source_may_name_the_user() -> None:
    nfs = {"name": "nfs", "volume": {"nfs": {"server": "files", "path": "/export/{username}"}},
           "mountPath": "/home/jovyan"}
    rendered = render_kernel(request(template=user_template(nfs), user="bob"))
    [volume] = [v for v in rendered.pod["spec"]["volumes"] if v["name"] == "nfs"]
    assert volume["nfs"] == {"server": "files", "path": "/export/bob"}


@pytest.mark.parametrize("change,field,words", [
    ({"volume": {"persistentVolumeClaim": {"claimName": "claim-{user}"}}},
     "spec.userVolumes[0].volume.persistentVolumeClaim.claimName", "unknown placeholder {user}"),
    ({"volume": {"persistentVolumeClaim": {"claimName": "claim-{unescaped_username}"}}},
     "spec.userVolumes[0].volume.persistentVolumeClaim.claimName", "unknown placeholder"),
    ({"volume": {}}, "spec.userVolumes[0].volume", "one volume source"),
    ({"volume": {"emptyDir": {}, "persistentVolumeClaim": {"claimName": "x"}}},
     "spec.userVolumes[0].volume", "one volume source"),
    ({"mountPath": "/home/../etc"}, "spec.userVolumes[0].mountPath", "without '..'"),
    ({"mountPath": "relative"}, "spec.userVolumes[0].mountPath", "absolute"),
    ({"subPath": "../{username}"}, "spec.userVolumes[0].subPath", "without '..'"),
    ({"subPath": "/abs"}, "spec.userVolumes[0].subPath", "relative"),
    ({"notebookPath": "home"}, "spec.userVolumes[0].notebookPath", "absolute"),
    ({"name": "Home"}, "spec.userVolumes[0].name", "DNS label"),
])
def test_bad_user_volumes_are_refused_naming_the_field(change: dict[str, Any], field: str,
                                                       words: str) -> None:
    entry = {**copy.deepcopy(HOME), **change}
    with pytest.raises(ResourceError) as info:
        TemplateView.from_object(template_doc(userVolumes=[entry]))
    assert field in str(info.value) and words in str(info.value)


def test_user_volumes_cannot_take_the_key_or_another_volume() -> None:
    with pytest.raises(ResourceError, match="used twice"):
        TemplateView.from_object(template_doc(userVolumes=[HOME, {**HOME, "mountPath": "/x"}]))
    with pytest.raises(RenderError, match="reserved"):
        render_kernel(request(template=user_template(
            {**HOME, "mountPath": "/var/run/elastic-kernels/key"})))
    with pytest.raises(RenderError, match="reserved"):
        render_kernel(request(template=user_template({**HOME, "name": "elastic-kernel-key"})))
    with pytest.raises(ResourceError, match="needs both"):
        TemplateView.from_object(template_doc(runAs={"uid": 1000}))
    with pytest.raises(ResourceError, match=">= 1"):
        TemplateView.from_object(template_doc(runAs={"uid": 0, "gid": 0}))


def test_the_crd_says_the_same() -> None:
    from .test_render import crd_validator
    validator = crd_validator("jupyterkerneltemplates.yaml")
    assert not list(validator.iter_errors(template_doc(userVolumes=[HOME, SHARED],
                                                       usernameScheme="escape",
                                                       runAs={"uid": 1000, "gid": 100})))
    assert list(validator.iter_errors(template_doc(userVolumes=[{"name": "x"}])))
    assert list(validator.iter_errors(template_doc(usernameScheme="raw")))
    assert list(validator.iter_errors(template_doc(runAs={"uid": 0, "gid": 0})))


# --- the working directory -----------------------------------------------------------------------

ROOTS = [("/home/jovyan", "/home/jovyan"), ("/home/jovyan/data", "/srv/data")]


@pytest.mark.parametrize("requested,path", [
    ("/home/jovyan/project/sub", "/home/jovyan/project/sub"),
    ("/home/jovyan", "/home/jovyan"),
    ("/home/jovyan/", "/home/jovyan"),
    ("/home/jovyan//a/./b", "/home/jovyan/a/b"),
    ("/home/jovyan/data/set1", "/srv/data/set1"),  # the longest notebook path wins
    (None, "/home/jovyan"),
    ("", "/home/jovyan"),
])
def test_notebook_folders_inside_the_users_volumes_are_kept(requested: str | None,
                                                           path: str) -> None:
    decision = decide_working_dir(requested, ROOTS)
    assert decision is not None
    assert (decision.path, decision.root, decision.warning) == (path, "/home/jovyan", "")


@pytest.mark.parametrize("requested,why", [
    ("/etc", "outside the user's volumes"),
    ("/home/jovyanx", "outside the user's volumes"),
    ("/home/jovyan/../../etc", "'..'"),
    ("/home/jovyan/..", "'..'"),
    ("project/sub", "not an absolute path"),
    ("/home/jovyan/a\nb", "control characters"),
    (5, "not a string"),
])
def test_other_folders_start_at_the_volume_root_with_a_warning(requested: object,
                                                               why: str) -> None:
    decision = decide_working_dir(requested, ROOTS)
    assert decision is not None
    assert decision.path == decision.root == "/home/jovyan"
    assert why in decision.warning and "starts in /home/jovyan" in decision.warning
    assert "\n" not in decision.warning


def test_without_user_volumes_nothing_changes() -> None:
    assert decide_working_dir("/etc", []) is None
    plain = render_kernel(request(client_env={"KERNEL_WORKING_DIR": "/etc"}))
    assert "workingDir" not in container(plain) and "EK_WORKING_DIR" not in env_of(plain)
    assert plain.warnings == ()


def test_rendered_working_dir_reaches_the_launcher_and_the_status() -> None:
    template = user_template(HOME)
    inside = render_kernel(request(template=template, client_env={
        "KERNEL_WORKING_DIR": "/home/jovyan/project"}))
    env = env_of(inside)
    assert container(inside)["workingDir"] == "/home/jovyan"
    assert env["EK_WORKING_DIR"] == "/home/jovyan/project"
    assert json.loads(env["EK_USER_MOUNTS"]) == ["/home/jovyan"]
    assert "EK_WORKING_DIR_WARNING" not in env and inside.warnings == ()
    # Not a variable of the kernel unless the kernelspec opts in (as before).
    assert "KERNEL_WORKING_DIR" not in env
    outside = render_kernel(request(template=template, client_env={
        "KERNEL_WORKING_DIR": "/etc/$(HOME)"}))
    [warning] = outside.warnings
    assert "'/etc/$(HOME)'" in warning and "outside" in warning
    assert env_of(outside)["EK_WORKING_DIR"] == "/home/jovyan"
    assert env_of(outside)["EK_WORKING_DIR_WARNING"] == warning.replace("$", "$$")
    assert outside.kernel_status["message"] == warning
    # An opted-in kernelspec still cannot leave the user's volumes.
    opted = render_kernel(request(template=template, spec=spec_view(
        clientOverrides={"workingDir": True}), client_env={"KERNEL_WORKING_DIR": "/etc"}))
    assert container(opted)["workingDir"] == "/home/jovyan" and opted.warnings


def run_launcher(tmp_path: Path, env: dict[str, str]) -> tuple[str, str]:
    """The launcher with a kernel that prints its cwd: (kernel's stdout, launcher's stderr)."""
    key = tmp_path / "key"
    key.write_text("0123456789abcdef0123456789abcdef")
    base = {"EK_KERNEL_ID": KERNEL_ID, "EK_IP": "127.0.0.1", "EK_KEY_FILE": str(key),
            "EK_SHELL_PORT": "1", "EK_IOPUB_PORT": "2", "EK_STDIN_PORT": "3",
            "EK_CONTROL_PORT": "4", "EK_HB_PORT": "5", "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), "--", sys.executable, "-c",
         "import os; print(os.getcwd())", "{connection_file}"],
        env={**base, **env}, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_launcher_enters_the_folder_only_inside_the_users_mounts(tmp_path: Path) -> None:
    home = tmp_path / "host-home"
    (home / "project" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (home / "escape").symlink_to(tmp_path / "elsewhere")
    mounts = {"LOCALCLUSTER_MOUNTS": json.dumps({"/home/jovyan": str(home)}),
              "EK_USER_MOUNTS": json.dumps(["/home/jovyan"])}
    cwd, _ = run_launcher(tmp_path, {**mounts, "EK_WORKING_DIR": "/home/jovyan/project/sub"})
    assert cwd == str(home / "project" / "sub")
    for wanted, words in (("/home/jovyan/escape", "leads outside"),
                          ("/home/jovyan/missing", "cannot enter"),
                          ("/home/jovyan/../x", "without '..'")):
        cwd, log = run_launcher(tmp_path, {**mounts, "EK_WORKING_DIR": wanted})
        assert cwd == str(home), wanted
        assert words in log and "starts in /home/jovyan" in log, log
    cwd, log = run_launcher(tmp_path, {**mounts, "EK_WORKING_DIR": "/home/jovyan",
                                       "EK_WORKING_DIR_WARNING": "KERNEL_WORKING_DIR '/etc' is "
                                       "outside the user's volumes"})
    assert cwd == str(home) and "warning: KERNEL_WORKING_DIR '/etc'" in log
    cwd, _ = run_launcher(tmp_path, {})  # no user volumes: the container's workingDir stays
    assert cwd == str(tmp_path)


# --- on the local cluster ---------------------------------------------------------------------


async def test_user_volume_pods_pass_restricted_pod_security(cluster: LocalCluster,
                                                             kube: KubeClient) -> None:
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": "users", "labels": labels}})
    rendered = render_kernel(request(namespace="users", user="Alice.Smith@example.com",
                                     template=user_template(HOME, SHARED,
                                                            runAs={"uid": 1000, "gid": 100})))
    created = await kube.create(PODS, rendered.pod, namespace="users")
    assert created["spec"]["securityContext"]["runAsUser"] == 1000


def hostpath_template(home_root: Path) -> dict[str, Any]:
    """The shipped CPU template with each user's folder under ``home_root`` as their volume,
    seen by their notebook server at ``home_root/<user>`` and by the kernel at /home/jovyan."""
    doc = copy.deepcopy(example("cpu"))
    doc["metadata"] = {"name": "cpu-home"}
    doc["spec"]["userVolumes"] = [{
        "name": "home", "volume": {"hostPath": {"path": f"{home_root}/{{username}}"}},
        "mountPath": "/home/jovyan", "notebookPath": f"{home_root}/{{username}}",
    }]
    return doc


async def install_home_spec(cluster: LocalCluster, tmp_path: Path, home_root: Path) -> None:
    spec = derived_kernelspec("python-cpu", "python-home", templateRef={"name": "cpu-home"})
    path = tmp_path / "home-spec.yaml"
    path.write_text(yaml.safe_dump_all([hostpath_template(home_root), spec]))
    await apply_files(cluster.kubeconfig_path, [path])


async def test_kernel_starts_in_the_notebooks_folder(
        cluster: LocalCluster, make_cluster_gateway: GatewayFactory, kube: KubeClient,
        tmp_path: Path) -> None:
    home_root = tmp_path / "homes"
    # The gateway's token is the admin's: "admin" is the user, home_root/admin the volume.
    notebook_dir = home_root / "admin" / "project" / "sub"
    notebook_dir.mkdir(parents=True)
    (notebook_dir / "data.txt").write_text("beside the notebook")
    await install_home_spec(cluster, tmp_path, home_root)
    gateway: ElasticGatewayApp = await make_cluster_gateway()

    async def start(working_dir: str) -> dict[str, Any]:
        response = await api(gateway.url, "POST", "/api/kernels", {
            "name": "python-home", "env": {"KERNEL_WORKING_DIR": working_dir}})
        assert response.code == 201, response.body
        return dict(json_of(response))

    async def run(kernel_id: str, code: str) -> str:
        ws = await KernelWS.open(gateway.url, kernel_id)
        try:
            result = await ws.execute(code, timeout=60)
        finally:
            ws.close()
        return str(result["stdout"])

    inside = await start(str(notebook_dir))
    assert await run(inside["id"], "print(open('data.txt').read())") == "beside the notebook\n"
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(inside["id"]))
    assert not record["status"].get("message")

    for outside in ("/etc", f"{home_root}/admin/../bob", f"{home_root}/bob"):
        kernel = await start(outside)
        cwd = await run(kernel["id"], "import os; print(os.getcwd())")
        assert cwd == f"{home_root / 'admin'}\n", outside  # the volume root of the user
        record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel["id"]))
        assert "KERNEL_WORKING_DIR" in record["status"]["message"], record["status"]
        assert "starts in /home/jovyan" in record["status"]["message"]
        await api(gateway.url, "DELETE", f"/api/kernels/{kernel['id']}")
