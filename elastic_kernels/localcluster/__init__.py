"""The local cluster: a Kubernetes on loopback for the demo, the tests and the benchmarks.

It imports nothing of the product, and nothing of the product imports it (``.importlinter``): the
product reaches it only over HTTP through the kubeconfig it writes, as it would a real cluster.
``cluster.LocalCluster`` starts the whole of it; ``elastic-kernels cluster`` runs one.

The cluster:
    ``cluster`` (``LocalCluster``: the parts below, the admin kubeconfig), ``tls`` (its CA and
    serving certificate), ``tasks`` (stopping background loops).
API server, protocol:
    ``apiserver`` (``APIServer``: the listeners), ``handler`` (the request handler), ``routing``
    (URLs to resources and verbs), ``negotiation`` (``Accept``), ``protobuf`` (kubectl's protobuf
    bodies), ``tables`` (what ``kubectl get`` prints), ``watchstream`` (the watch wire form),
    ``discovery``, ``openapi``, ``patching`` (the four patch types), ``errors`` (``Status``
    bodies), ``accounting`` (requests counted for tests).
API server, who may do what:
    ``authn`` and ``satokens`` (credentials, ServiceAccount tokens), ``requestinfo``, ``authz``,
    ``rbac`` and ``bootstrappolicy`` (RBAC and the default roles), ``accessreview``
    (``kubectl auth can-i``), ``admission`` (the chain of): ``ownerrefs``, ``podsecurity``,
    ``admissionpolicy``; ``cel`` (CEL expressions).
Store:
    ``store`` (``Store``), ``watchcache`` (watches and their event window), ``objectmeta``
    (metadata rules), ``kindrules`` (built-in kinds' defaults and validation), ``crdregistry``
    (CRDs and their types), ``schema`` and ``celrules`` (custom objects' schemas and CEL rules),
    ``garbagecollection`` (ownerReferences, namespace and CRD teardown), ``writeoptions``,
    ``resources`` (the served types), ``selectors``.
Scheduler:
    ``scheduler``, ``fit`` (what fits where, in kube-scheduler's words), ``nodes`` (simulated
    nodes), ``quantities``, ``eventrecorder`` (Events, shared with the kubelet).
Kubelet:
    ``kubelet``, ``processes`` (a container as a process group), ``podenv`` (its environment),
    ``podstatus`` (phase and conditions), ``volumes``, ``claimmounts`` (a claim as its volume's
    directory), ``images`` (how an image "runs" here), ``imagepulls`` (which images each node
    holds, simulated pull time), ``allocators`` (pod IPs and GPUs).
Controllers:
    ``daemonsets`` (a pod of each DaemonSet on every node it selects; the image pre-puller),
    ``deployments`` (opt-in, ``LocalCluster(controllers={"deployment"})``: ``spec.replicas`` pods
    of each Deployment's template, rolled on a change; off unless asked for), both on
    ``workloadcontroller`` (watched indexes, the wake-and-reconcile loop, pod creation through
    Pod Security).
GPU telemetry:
    ``dcgm`` (a dcgm-exporter stand-in serving the simulated GPUs' utilisation), ``simgpu`` (the
    library a kernel marks its GPU busy with; runs inside pods).
Storage:
    ``claims`` (facts about claims, volumes and classes), ``storagerules`` (their validation),
    ``storageadmission`` (default class, protection finalizers), ``pvcontroller`` (binding,
    provisioning, reclaim), ``localpath`` (the local-path provisioner and default class),
    ``volumefit`` (the scheduler's volume plugins).

See DESIGN section 6 for what it must honour and enforce.
"""
