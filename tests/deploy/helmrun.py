"""Install the chart with real Helm (the Helm v4 Go library in the ``helm-sdkpy`` wheel).

Run as a separate process (``python -m tests.deploy.helmrun``) because the Go runtime reads its
environment once, when the library loads: ``HELM_DRIVER=memory`` must be set before that, so the
release record stays in memory (the local cluster does not speak protobuf, which client-go uses
for Secrets) and only the chart's own objects reach the cluster. Prints the release as JSON; its
``manifest`` is exactly what ``helm template`` renders.

    python -m tests.deploy.helmrun --kubeconfig K --namespace NS --chart DIR [--values JSON]
        [--upgrade-values JSON]

``--upgrade-values`` runs ``helm upgrade`` with those values right after the install, in the same
process (the in-memory release record lives only as long as the process), and prints both
releases as ``{"install": ..., "upgrade": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--chart", required=True)
    p.add_argument("--release", default="elastic-kernels")
    p.add_argument("--values", default="{}", help="values as JSON")
    p.add_argument("--lint", action="store_true", help="run helm lint instead of install")
    p.add_argument("--upgrade-values", default=None, help="then upgrade with these (JSON)")
    args = p.parse_args(argv)
    if os.environ.get("HELM_DRIVER") != "memory":
        print("helmrun: HELM_DRIVER=memory must be set in the environment", file=sys.stderr)
        return 2
    import helm_sdkpy  # noqa: PLC0415 - only after the environment check

    config = helm_sdkpy.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
    try:
        if args.lint:
            result = asyncio.run(helm_sdkpy.Lint(config).run(args.chart))
        else:
            result = asyncio.run(helm_sdkpy.Install(config).run(
                args.release, args.chart, values=json.loads(args.values), wait=False,
                timeout=60))
            if args.upgrade_values is not None:
                upgraded = asyncio.run(helm_sdkpy.Upgrade(config).run(
                    args.release, args.chart, values=json.loads(args.upgrade_values),
                    wait=False, timeout=60))
                result = {"install": result, "upgrade": upgraded}
    except helm_sdkpy.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
