"""``elastic-kernels prepull``: the image pre-pull DaemonSets rendered or applied, gateway or not.

The gateway keeps them itself when ``ImagePrepuller.enabled`` is set. This command is for the
other cases: an install driven by Helm, kustomize or GitOps that wants the DaemonSets as files
(``elastic-kernels prepull --from kernelspecs/ > prepull.yaml``), a one-off pre-pull before a
class or a workshop (``--apply``), a gateway without the RBAC to write DaemonSets, and removing
them (``--delete``). It renders with the same pure function as the gateway
(:func:`elastic_kernels.provisioner.prepull.render_prepull`), so both make the same objects and
either can take over from the other.

Output is YAML on stdout (what was left out and why goes to stderr); ``--apply`` and
``--delete`` print what they did. Exit status 2 for bad arguments or manifests, 1 when the API
refuses (with its message).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from .kube import resources as R
from .kube.apply import ManifestError, load_manifests
from .kube.client import DAEMONSETS, KubeClient, KubeError
from .kube.config import KubeConfigError, load_cluster_config
from .provisioner import prepull

JSON = dict[str, Any]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elastic-kernels prepull",
        description="Render (default), apply or delete the DaemonSets that pre-pull the "
        "kernelspecs' images onto the nodes their templates select.")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, "
                   "~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", help="namespace of the kernelspecs and templates (default: "
                   "the context's)")
    p.add_argument("--prepull-namespace", help="namespace of the DaemonSets (default: the "
                   "kernelspecs')")
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="PATH",
                   help="read JupyterKernelSpecs and templates from these manifest files or "
                   "directories instead of the cluster (repeatable; needs no cluster to render)")
    p.add_argument("--pause-image", default=prepull.DEFAULT_PAUSE_IMAGE,
                   help="image of the pods' long-running container")
    p.add_argument("--extra-image", dest="extra_images", action="append", default=[],
                   metavar="IMAGE", help="also pre-pull IMAGE wherever kernels run (repeatable)")
    p.add_argument("--name-prefix", default=prepull.DEFAULT_NAME_PREFIX,
                   help="start of the DaemonSets' names")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--apply", action="store_true",
                      help="create, update and delete the DaemonSets in the cluster")
    what.add_argument("--delete", action="store_true",
                      help="delete every pre-pull DaemonSet elastic-kernels made")
    p.add_argument("--log-level", default="WARNING")
    return p


def _views(docs: Sequence[JSON], namespace: str) -> tuple[list[R.KernelSpecView],
                                                          dict[str, R.TemplateView | None]]:
    """Kernelspecs and templates of ``namespace`` from objects; raises ValueError (ResourceError)
    naming a kernelspec or template that does not parse."""
    specs: list[R.KernelSpecView] = []
    templates: dict[str, R.TemplateView | None] = {}
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if (meta.get("namespace") or namespace) != namespace:
            continue
        meta.setdefault("namespace", namespace)
        if doc.get("apiVersion") != R.API_VERSION:
            continue
        if doc.get("kind") == R.KERNELSPECS.kind:
            specs.append(R.KernelSpecView.from_object(doc))
        elif doc.get("kind") == R.TEMPLATES.kind:
            view = R.TemplateView.from_object(doc)
            templates[view.name] = view
    return specs, templates


def _fail(message: str, code: int) -> int:
    print(f"elastic-kernels prepull: {message}", file=sys.stderr)
    return code


async def _main(args: argparse.Namespace) -> int:
    client: KubeClient | None = None
    try:
        if args.apply or args.delete or not args.sources:
            cfg = load_cluster_config(args.kubeconfig, args.context, args.namespace)
            client = KubeClient(cfg.api_client, cfg.namespace)
        namespace = args.namespace or (client.namespace if client is not None else "default")
        settings = prepull.PrepullSettings(
            namespace=args.prepull_namespace or namespace, pause_image=args.pause_image,
            extra_images=tuple(args.extra_images), name_prefix=args.name_prefix)
        if args.delete:
            assert client is not None
            current = await client.list(DAEMONSETS, settings.namespace,
                                        label_selector=prepull.PREPULL_SELECTOR)
            done = await prepull.apply_prepull(client, settings.namespace, [],
                                               current.get("items") or [])
            print("\n".join(done) or "no pre-pull DaemonSets")
            return 0
        if args.sources:
            docs = [doc for _, doc in load_manifests(args.sources)]
        else:
            assert client is not None
            docs = []
            for resource in (R.KERNELSPECS, R.TEMPLATES):
                listed = await client.list(resource, namespace)
                for item in listed.get("items") or []:
                    docs.append({"apiVersion": R.API_VERSION, "kind": resource.kind, **item})
        specs, templates = _views(docs, namespace)
        rendered = prepull.render_prepull(specs, templates, settings)
        for reason in rendered.skipped:
            print(f"elastic-kernels prepull: left out {reason}", file=sys.stderr)
        if not args.apply:
            sys.stdout.write(yaml.safe_dump_all(list(rendered.daemonsets), sort_keys=False))
            return 0
        assert client is not None
        current = await client.list(DAEMONSETS, settings.namespace,
                                    label_selector=prepull.PREPULL_SELECTOR)
        done = await prepull.apply_prepull(client, settings.namespace, rendered.daemonsets,
                                           current.get("items") or [])
        print("\n".join(done) or "pre-pull DaemonSets are up to date")
        return 0
    except (ManifestError, KubeConfigError, prepull.PrepullError, ValueError) as e:
        return _fail(str(e), 2)
    except KubeError as e:
        return _fail(f"the Kubernetes API refused: {e}", 1)
    finally:
        if client is not None:
            await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``elastic-kernels prepull``; bad arguments exit 2 with the usage (argparse)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    return asyncio.run(_main(args))
