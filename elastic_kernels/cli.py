"""The ``elastic-kernels`` command: one entry point for every process this project runs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

#: Where ``elastic-kernels demo`` keeps its files unless told: in the directory it is run from
#: (the checkout for ``make demo``, where ``.demo/`` is ignored by git).
DEMO_WORKDIR = ".demo"


def _cluster_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster", help="run the local cluster (API server, scheduler, kubelet) on 127.0.0.1",
        description="Run the embedded local Kubernetes: an API server stand-in, a scheduler with "
        "simulated GPU nodes, and a kubelet that runs pod containers as local processes.",
    )
    p.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    p.add_argument("--port", type=int, default=0, help="API server port (0: any free port)")
    p.add_argument("--nodes", type=int, default=2, help="number of simulated nodes")
    p.add_argument("--gpus-per-node", type=int, default=4, help="nvidia.com/gpu per node")
    _gpu_flavor_arguments(p)
    p.add_argument("--cpu-per-node", default="8", help="allocatable cpu per node")
    p.add_argument("--memory-per-node", default="32Gi", help="allocatable memory per node")
    p.add_argument("--namespace", default="default", help="namespace of the kubeconfig context")
    p.add_argument("--apply", action="append", default=[], metavar="PATH",
                   help="manifest file or directory to apply once the cluster is up "
                   "(repeatable; CRDs are applied first)")
    p.add_argument("--with-crds", action="store_true",
                   help="apply the CRDs this package ships (the repository's deploy/crds), "
                   "so no checkout is needed")
    p.add_argument("--with-examples", action="store_true",
                   help="apply the CRDs and the example kernelspecs this package ships "
                   "(Python on CPU and on GPU: the repository's kernelspecs/)")
    p.add_argument("--workdir", help="directory for pod files (default: a temporary one)")
    p.add_argument("--image-pull-seconds", type=float, default=None, metavar="SECONDS",
                   help="simulate image pulls: each node lacks every image until its first "
                   "use there, which then takes SECONDS (default: every image is present)")
    p.add_argument("--controllers", default="", metavar="NAMES",
                   help="optional controllers to run as well, comma-separated: deployment "
                   "(runs the pods of apps/v1 Deployments, so `kubectl apply -k deploy/` gets "
                   "its gateway pods and `kubectl rollout status` works; off by default)")
    p.add_argument("--log-level", default="INFO")


def _gpu_flavor_arguments(p: argparse.ArgumentParser) -> None:
    """Mixed GPU nodes (issue 16), for ``cluster`` and ``demo`` alike."""
    p.add_argument("--gpu-flavors", metavar="SPEC",
                   help="the nodes' GPUs instead of --nodes x --gpus-per-node: one node per "
                   "comma-separated item, each RESOURCE=COUNT[+RESOURCE=COUNT...], e.g. "
                   "nvidia.com/gpu=2,nvidia.com/mig-1g.10gb=7,nvidia.com/gpu.shared=8 (whole "
                   "GPUs, MIG partitions, time-sliced shares)")
    p.add_argument("--gpu-replicas", type=int, default=4, metavar="N",
                   help="time-sliced shares per physical GPU for *.shared resources "
                   "(with --gpu-flavors)")
    p.add_argument("--node-layout", metavar="FILE",
                   help="the nodes from a YAML or JSON file (nodes: [{name, gpus: {RESOURCE: "
                   "COUNT}, cpu, memory, gpuReplicas, labels, taints}]), instead of --nodes")


def cluster_nodes(args: argparse.Namespace) -> list[Any] | None:
    """The nodes ``--gpu-flavors`` or ``--node-layout`` describe (None: neither was given);
    raises ValueError with a message for the user."""
    from .localcluster.nodes import nodes_from_options

    return nodes_from_options(args.gpu_flavors, args.node_layout,
                              gpu_replicas=args.gpu_replicas, cpu=args.cpu_per_node,
                              memory=args.memory_per_node)


def cluster_controllers(names: str) -> frozenset[str]:
    """``--controllers``: the optional controllers named, comma-separated; raises ValueError
    naming the ones there are for a name the local cluster does not have."""
    from .localcluster.cluster import optional_controllers

    return optional_controllers([n.strip() for n in names.split(",") if n.strip()])


def _packaged_manifests(args: argparse.Namespace) -> list[Path]:
    """The package data that ``--with-crds`` and ``--with-examples`` name."""
    from . import data

    paths = []
    if args.with_crds or args.with_examples:
        paths.append(data.crds_dir())
    if args.with_examples:
        paths.append(data.kernelspecs_dir())
    return paths


def _cluster(args: argparse.Namespace) -> int:
    """Check the arguments and read the manifests before anything starts."""
    from .kube.apply import ManifestError, load_manifests

    for name in ("nodes", "gpus_per_node", "image_pull_seconds"):
        if (getattr(args, name) or 0) < 0:
            print(f"elastic-kernels cluster: --{name.replace('_', '-')} must be >= 0",
                  file=sys.stderr)
            return 2
    try:
        args.node_configs = cluster_nodes(args)
        args.controllers = cluster_controllers(args.controllers)
    except ValueError as e:
        print(f"elastic-kernels cluster: {e}", file=sys.stderr)
        return 2
    for path in args.apply:
        if not Path(path).exists():
            print(f"elastic-kernels cluster: --apply {path}: no such file or directory (the "
                  "CRDs and example kernelspecs this package ships: --with-crds, "
                  "--with-examples)", file=sys.stderr)
            return 2
    try:
        docs = load_manifests([*_packaged_manifests(args), *args.apply])
    except ManifestError as e:
        print(f"elastic-kernels cluster: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_run_cluster(args, docs))


async def _run_cluster(args: argparse.Namespace, docs: list[tuple[str, dict[str, Any]]]) -> int:
    from .kube.apply import ManifestError, apply_manifests
    from .kube.client import KubeClient
    from .kube.config import load_cluster_config
    from .localcluster.cluster import LocalCluster
    from .localcluster.images import ImagePolicy

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    cluster = LocalCluster(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpu_per_node=args.cpu_per_node,
        memory_per_node=args.memory_per_node, port=args.port, workdir=args.workdir,
        kubeconfig_path=args.kubeconfig, namespace=args.namespace,
        node_configs=args.node_configs,
        image_policy=ImagePolicy(pull_seconds=args.image_pull_seconds),
        controllers=args.controllers,
    )
    try:
        await cluster.start()
    except OSError as e:
        print(f"elastic-kernels cluster: cannot start: {e}", file=sys.stderr)
        return 1
    try:
        if docs:
            cfg = load_cluster_config(cluster.kubeconfig_path)
            client = KubeClient(cfg.api_client, cfg.namespace)
            try:
                applied = await apply_manifests(client, docs)
            except ManifestError as e:
                print(f"elastic-kernels cluster: {e}", file=sys.stderr)
                return 1
            finally:
                await client.close()
            logging.getLogger(__name__).info("applied %s", ", ".join(applied))
        print(
            f"local cluster: API server {cluster.server_url}, kubeconfig "
            f"{cluster.kubeconfig_path} (context elastic-local, namespace {args.namespace}), "
            f"{_describe_nodes(args)}; Ctrl-C stops it",
            flush=True,
        )
        await stop.wait()
    finally:
        await cluster.stop()
    return 0


def _describe_nodes(args: argparse.Namespace) -> str:
    configs = getattr(args, "node_configs", None)
    if configs is None:
        return f"{args.nodes} node(s) x {args.gpus_per_node} nvidia.com/gpu"
    parts = []
    for cfg in configs:
        devices = {"nvidia.com/gpu": cfg.gpus, **cfg.gpu_flavors}
        held = " + ".join(f"{n} {r}" for r, n in devices.items() if n) or "no GPUs"
        parts.append(f"{cfg.name}: {held}")
    return f"{len(configs)} node(s) ({'; '.join(parts)})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="elastic-kernels",
        description="Jupyter kernels as per-kernel pods on Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("gateway", help="run the headless kernel gateway (jupyter_server options)",
                   add_help=False)
    _cluster_parser(sub)
    sub.add_parser("cull", help="delete idle, over-age and orphaned kernels (for a CronJob)",
                   add_help=False)
    sub.add_parser("prepull", help="render, apply or delete the image pre-pull DaemonSets",
                   add_help=False)
    demo = sub.add_parser(
        "demo", help="local cluster + gateway + JupyterLab, in one command",
        description="Start the local cluster with the CRDs and example kernelspecs this package "
        "ships, the gateway, and JupyterLab pointed at it (--no-lab: cluster and gateway only, "
        "which needs no JupyterLab). Kernels run this Python's ipykernel. Ctrl-C stops all.",
    )
    demo.add_argument("--workdir", default=DEMO_WORKDIR,
                      help="where the demo keeps its kubeconfig, gateway token, logs and "
                      "notebooks (default: .demo in the current directory)")
    demo.add_argument("--lab-port", type=int, default=8888, help="JupyterLab's port")
    demo.add_argument("--gateway-port", type=int, default=8889, help="the gateway's port")
    _gpu_flavor_arguments(demo)
    demo.add_argument("--no-lab", action="store_true",
                      help="start the cluster and the gateway only; print the gateway's URL, "
                      "where its token is, and a kubectl command line")

    if argv and argv[0] == "gateway":
        from .gateway.app import main as gateway_main

        return int(gateway_main(argv[1:]) or 0)
    if argv and argv[0] == "cull":
        from .cull import main as cull_main

        return cull_main(argv[1:])
    if argv and argv[0] == "prepull":
        from .prepullcmd import main as prepull_main

        return prepull_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
