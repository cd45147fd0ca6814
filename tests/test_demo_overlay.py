"""The demo's overlay (issue 14, item 5): the notebooks folder as the user's volume.

Fast checks of what ``elastic-kernels demo`` writes and applies; the demo itself runs in
``tests/test_packaging.py`` (from the wheel, ``--no-lab``) and ``tests/test_browser_demo.py``
(in a browser).
"""

from __future__ import annotations

import json
from pathlib import Path

import elastic_kernels.data as data
from elastic_kernels.demo import (DEMO_NAMESPACE, DEMO_USER, EXAMPLE_CSV, KERNEL_HOME,
                                  demo_manifests, write_example)
from elastic_kernels.kube.apply import KNOWN, load_manifests
from elastic_kernels.kube.resources import TemplateView
from elastic_kernels.kube.slugs import expand, user_slugs
from elastic_kernels.provisioner.uservolumes import decide_working_dir, render_user_volumes


def test_every_shipped_template_gets_the_notebooks_folder_and_nothing_else(
        tmp_path: Path) -> None:
    notebooks = tmp_path / "notebooks"
    docs = demo_manifests(notebooks)
    shipped = {doc["metadata"]["name"]: doc for _, doc in load_manifests([data.kernelspecs_dir()])
               if doc["kind"] == "JupyterKernelTemplate"}
    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "JupyterKernelTemplate"}
    assert sorted(templates) == sorted(shipped) == ["cpu", "gpu"]
    assert not [d for d in docs if d["kind"] == "JupyterKernelSpec"], "kernelspecs as shipped"
    for name, doc in templates.items():
        spec = dict(doc["spec"])
        [volume] = spec.pop("userVolumes")
        assert spec == shipped[name]["spec"], "only userVolumes is added"
        view = TemplateView.from_object(doc)
        mounts = render_user_volumes(view, DEMO_USER)
        assert mounts.volumes == ({"name": "notebooks", "persistentVolumeClaim": {
            "claimName": f"claim-{DEMO_USER}"}},)
        # JupyterLab's KERNEL_WORKING_DIR for a notebook in example/ maps below /home/jovyan.
        decision = decide_working_dir(str(notebooks / "example"), mounts.roots)
        assert decision is not None and decision.path == f"{KERNEL_HOME}/example"
        assert not decision.warning
        assert volume["volume"]["persistentVolumeClaim"]["claimName"] == "claim-{username}"

    [pv] = [d for d in docs if d["kind"] == "PersistentVolume"]
    [pvc] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    claim = expand("claim-{username}", user_slugs(DEMO_USER, "safe"))
    assert pvc["metadata"] == {"name": claim, "namespace": DEMO_NAMESPACE}
    assert pv["spec"]["claimRef"] == {"namespace": DEMO_NAMESPACE, "name": claim}
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["hostPath"]["path"] == str(notebooks)
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain", "the user's files stay"
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) in KNOWN, "the cluster's --apply knows it"


def test_the_example_is_written_once_and_then_left_alone(tmp_path: Path) -> None:
    folder = write_example(tmp_path)
    assert (folder / "data.csv").read_text() == EXAMPLE_CSV
    notebook = json.loads((folder / "read-data.ipynb").read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python-gpu"
    assert any('open("data.csv")' in cell["source"] for cell in notebook["cells"])
    (folder / "data.csv").write_text("mine\n")
    write_example(tmp_path)
    assert (folder / "data.csv").read_text() == "mine\n"
