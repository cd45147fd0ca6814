"""Pod Security Admission: the Pod Security Standards a namespace's labels ask for, on pod create.

A kernel pod that a restricted namespace would refuse must be refused here too, or the project
ships pods that production clusters reject. The checks, their order and their words follow
kube-apiserver's ``pod-security-admission`` (policy level ``latest``, Kubernetes 1.3x): baseline
checks first, then (for ``restricted``) the restricted ones, each in the order of its source
file; a baseline check that a restricted one supersedes (capabilities, seccomp, hostPath) runs
only at ``baseline``. ``enforce`` refuses with a 403 ``violates PodSecurity "level:version"``;
``warn`` adds ``would violate PodSecurity`` warnings to an admitted request; ``audit`` has no
audit log to write to here and is ignored. Exemptions are not configurable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import errors as E

JSON = dict[str, Any]
Result = tuple[str, str] | None  # (forbidden reason, detail) or None when allowed
LABEL = "pod-security.kubernetes.io/"
LEVELS = ("privileged", "baseline", "restricted")


def _quote(items: list[str]) -> str:
    return '"' + '", "'.join(items) + '"' if items else ""


def _plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _containers(spec: JSON) -> list[JSON]:
    out: list[JSON] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        out.extend(c for c in spec.get(key) or [] if isinstance(c, dict))
    return out


def _sc(obj: JSON) -> JSON:
    value = obj.get("securityContext")
    return value if isinstance(value, dict) else {}


def _named(kind: str, names: list[str]) -> str:
    return f"{_plural(kind, kind + 's', len(names))} {_quote(names)}"


# -- baseline ----------------------------------------------------------------------------------

_APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def _apparmor(meta: JSON, spec: JSON) -> Result:
    setters: list[str] = []
    values: set[str] = set()
    pod_profile = _sc(spec).get("appArmorProfile") or {}
    if pod_profile.get("type") == "Unconfined":
        setters.append("pod")
        values.add("Unconfined")
    bad = [c.get("name", "") for c in _containers(spec)
           if (_sc(c).get("appArmorProfile") or {}).get("type") == "Unconfined"]
    if bad:
        setters.append(_named("container", bad))
        values.add("Unconfined")
    annotations = sorted(f'{k}="{v}"' for k, v in (meta.get("annotations") or {}).items()
                         if k.startswith(_APPARMOR_PREFIX) and v and v != "runtime/default"
                         and not str(v).startswith("localhost/"))
    if not setters and not annotations:
        return None
    details = []
    if setters:
        details.append(f"{' and '.join(setters)} must not set AppArmor profile type to "
                       f"{_quote(sorted(values))}")
    details.extend(annotations)
    count = len(values) + len(annotations)
    return (_plural("forbidden AppArmor profile", "forbidden AppArmor profiles", count),
            ", ".join(details))


_DEFAULT_CAPS = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
                           "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
                           "SYS_CHROOT"})


def _capabilities_baseline(meta: JSON, spec: JSON) -> Result:
    bad: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        added = [str(a) for a in (_sc(c).get("capabilities") or {}).get("add") or []
                 if a not in _DEFAULT_CAPS]
        if added:
            bad.append(c.get("name", ""))
            caps.update(added)
    if not bad:
        return None
    return ("non-default capabilities",
            f"{_named('container', bad)} must not include {_quote(sorted(caps))} in "
            "securityContext.capabilities.add")


def _host_namespaces(meta: JSON, spec: JSON) -> Result:
    used = sorted(k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True)
    return ("host namespaces", ", ".join(used)) if used else None


def _host_path_volumes(meta: JSON, spec: JSON) -> Result:
    names = [v.get("name", "") for v in spec.get("volumes") or []
             if isinstance(v, dict) and v.get("hostPath") is not None]
    return ("hostPath volumes", _named("volume", names)) if names else None


def _host_ports(meta: JSON, spec: JSON) -> Result:
    bad: list[str] = []
    ports: set[int] = set()
    for c in _containers(spec):
        used = [int(p["hostPort"]) for p in c.get("ports") or []
                if isinstance(p, dict) and p.get("hostPort")]
        if used:
            bad.append(c.get("name", ""))
            ports.update(used)
    if not bad:
        return None
    listed = ", ".join(sorted(str(p) for p in ports))
    return ("hostPort", f"{_named('container', bad)} {_plural('uses', 'use', len(bad))} "
                        f"{_plural('hostPort', 'hostPorts', len(ports))} {listed}")


def _probe_hosts(handler: Any) -> list[str]:
    if not isinstance(handler, dict):
        return []
    return [str(h) for key in ("httpGet", "tcpSocket")
            if isinstance(handler.get(key), dict) and (h := handler[key].get("host"))]


def _host_probes(meta: JSON, spec: JSON) -> Result:
    bad: set[str] = set()
    hosts: set[str] = set()
    for c in _containers(spec):
        lifecycle: JSON = c["lifecycle"] if isinstance(c.get("lifecycle"), dict) else {}
        found = [h for handler in (c.get("livenessProbe"), c.get("readinessProbe"),
                                   c.get("startupProbe"), lifecycle.get("postStart"),
                                   lifecycle.get("preStop"))
                 for h in _probe_hosts(handler)]
        if found:
            bad.add(c.get("name", ""))
            hosts.update(found)
    if not bad:
        return None
    return ("probe or lifecycle host",
            f"{_named('container', sorted(bad))} {_plural('uses', 'use', len(bad))} "
            f"{_plural('probe or lifecycle host', 'probe or lifecycle hosts', len(hosts))} "
            f"{_quote(sorted(hosts))}")


def _privileged(meta: JSON, spec: JSON) -> Result:
    bad = [c.get("name", "") for c in _containers(spec) if _sc(c).get("privileged") is True]
    if not bad:
        return None
    return ("privileged",
            f"{_named('container', bad)} must not set securityContext.privileged=true")


def _proc_mount(meta: JSON, spec: JSON) -> Result:
    if spec.get("hostUsers") is False:
        return None
    bad: list[str] = []
    kinds: set[str] = set()
    for c in _containers(spec):
        mount = _sc(c).get("procMount")
        if mount is not None and mount != "Default":
            bad.append(c.get("name", ""))
            kinds.add(str(mount))
    if not bad:
        return None
    return ("procMount", f"{_named('container', bad)} must not set securityContext.procMount to "
                         f"{_quote(sorted(kinds))}")


def _seccomp_setters(spec: JSON, require: bool) -> Result:
    setters: list[str] = []
    values: set[str] = set()
    pod_set = False
    pod_profile = _sc(spec).get("seccompProfile")
    if isinstance(pod_profile, dict):
        if pod_profile.get("type") in ("RuntimeDefault", "Localhost"):
            pod_set = True
        else:
            setters.append("pod")
            values.add(str(pod_profile.get("type") or ""))
    explicit: list[str] = []
    implicit: list[str] = []
    for c in _containers(spec):
        profile = _sc(c).get("seccompProfile")
        if isinstance(profile, dict):
            if profile.get("type") not in ("RuntimeDefault", "Localhost"):
                explicit.append(c.get("name", ""))
                values.add(str(profile.get("type") or ""))
        elif not pod_set:
            implicit.append(c.get("name", ""))
    if explicit:
        setters.append(_named("container", explicit))
    if setters:
        return ("seccompProfile",
                f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to "
                f"{_quote(sorted(values))}")
    if require and implicit:
        return ("seccompProfile", f"pod or {_named('container', implicit)} must set "
                                  'securityContext.seccompProfile.type to "RuntimeDefault" or '
                                  '"Localhost"')
    return None


def _seccomp_baseline(meta: JSON, spec: JSON) -> Result:
    return _seccomp_setters(spec, require=False)


_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})


def _selinux(meta: JSON, spec: JSON) -> Result:
    bad_types: set[str] = set()
    flags = {"user": False, "role": False}

    def valid(opts: JSON) -> bool:
        ok = True
        if str(opts.get("type") or "") not in _SELINUX_TYPES:
            ok = False
            bad_types.add(str(opts.get("type")))
        for key in ("user", "role"):
            if opts.get(key):
                ok = False
                flags[key] = True
        return ok

    setters: list[str] = []
    pod_opts = _sc(spec).get("seLinuxOptions")
    if isinstance(pod_opts, dict) and not valid(pod_opts):
        setters.append("pod")
    bad = [c.get("name", "") for c in _containers(spec)
           if isinstance(_sc(c).get("seLinuxOptions"), dict)
           and not valid(_sc(c)["seLinuxOptions"])]
    if bad:
        setters.append(_named("container", bad))
    if not setters:
        return None
    data: list[str] = []
    if bad_types:  # kube-apiserver names user and role only alongside a bad type
        data.append(f"{_plural('type', 'types', len(bad_types))} {_quote(sorted(bad_types))}")
        data.extend(f"{key} may not be set" for key in ("user", "role") if flags[key])
    return ("seLinuxOptions", f"{' and '.join(setters)} set forbidden "
                              f"securityContext.seLinuxOptions: {'; '.join(data)}")


_SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                           "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
                           "net.ipv4.ip_unprivileged_port_start"})


def _sysctls(meta: JSON, spec: JSON) -> Result:
    names = [str(s.get("name")) for s in _sc(spec).get("sysctls") or []
             if isinstance(s, dict) and s.get("name") not in _SAFE_SYSCTLS]
    return ("forbidden sysctls", ", ".join(names)) if names else None


def _host_process(meta: JSON, spec: JSON) -> Result:
    def on(obj: JSON) -> bool:
        return (_sc(obj).get("windowsOptions") or {}).get("hostProcess") is True

    setters = ["pod"] if on(spec) else []
    bad = [c.get("name", "") for c in _containers(spec) if on(c)]
    if bad:
        setters.append(_named("container", bad))
    if not setters:
        return None
    return ("hostProcess", f"{' and '.join(setters)} must not set "
                           "securityContext.windowsOptions.hostProcess=true")


# -- restricted --------------------------------------------------------------------------------


def _privilege_escalation(meta: JSON, spec: JSON) -> Result:
    bad = [c.get("name", "") for c in _containers(spec)
           if _sc(c).get("allowPrivilegeEscalation") is not False]
    if not bad:
        return None
    return ("allowPrivilegeEscalation != false",
            f"{_named('container', bad)} must set securityContext.allowPrivilegeEscalation=false")


def _capabilities_restricted(meta: JSON, spec: JSON) -> Result:
    missing_drop: list[str] = []
    adding: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        capabilities = _sc(c).get("capabilities")
        if not isinstance(capabilities, dict):
            missing_drop.append(c.get("name", ""))
            continue
        if "ALL" not in (capabilities.get("drop") or []):
            missing_drop.append(c.get("name", ""))
        added = [str(a) for a in capabilities.get("add") or [] if a != "NET_BIND_SERVICE"]
        if added:
            adding.append(c.get("name", ""))
            caps.update(added)
    details: list[str] = []
    if missing_drop:
        details.append(f'{_named("container", missing_drop)} must set '
                       'securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_named('container', adding)} must not include "
                       f"{_quote(sorted(caps))} in securityContext.capabilities.add")
    return ("unrestricted capabilities", "; ".join(details)) if details else None


_ALLOWED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                    "persistentVolumeClaim", "projected", "secret")


def _restricted_volumes(meta: JSON, spec: JSON) -> Result:
    names = sorted({str(v.get("name", "")) for v in spec.get("volumes") or []
                    if isinstance(v, dict) and not any(v.get(k) is not None
                                                       for k in _ALLOWED_VOLUMES)})
    if not names:
        return None
    listed = "[" + " ".join(f'"{n}"' for n in names) + "]"  # Go's %q of a []string
    return ("restricted volume types", f"volumes {listed} have restricted types")


def _explicit_or_implicit(spec: JSON, key: str, bad_value: Any) -> tuple[list[str], list[str],
                                                                          bool]:
    setters: list[str] = []
    pod_value = _sc(spec).get(key)
    pod_ok = pod_value is not None and pod_value != bad_value
    if pod_value == bad_value:
        setters.append("pod")
    explicit: list[str] = []
    implicit: list[str] = []
    for c in _containers(spec):
        value = _sc(c).get(key)
        if value is None:
            implicit.append(c.get("name", ""))
        elif value == bad_value:
            explicit.append(c.get("name", ""))
    if explicit:
        setters.append(_named("container", explicit))
    return setters, implicit, pod_ok


def _run_as_non_root(meta: JSON, spec: JSON) -> Result:
    if spec.get("hostUsers") is False:
        return None
    setters, implicit, pod_ok = _explicit_or_implicit(spec, "runAsNonRoot", False)
    if setters:
        return ("runAsNonRoot != true",
                f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false")
    if implicit and not pod_ok:
        return ("runAsNonRoot != true", f"pod or {_named('container', implicit)} must set "
                                        "securityContext.runAsNonRoot=true")
    return None


def _run_as_user(meta: JSON, spec: JSON) -> Result:
    if spec.get("hostUsers") is False:
        return None
    setters, _, _ = _explicit_or_implicit(spec, "runAsUser", 0)
    if setters:
        return ("runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0")
    return None


def _seccomp_restricted(meta: JSON, spec: JSON) -> Result:
    return _seccomp_setters(spec, require=True)


Check = Callable[[JSON, JSON], Result]
#: (check, level, superseded at restricted), in kube-apiserver's order.
CHECKS: tuple[tuple[Check, str, bool], ...] = (
    (_privilege_escalation, "restricted", False),
    (_apparmor, "baseline", False),
    (_capabilities_baseline, "baseline", True),
    (_capabilities_restricted, "restricted", False),
    (_host_namespaces, "baseline", False),
    (_host_path_volumes, "baseline", True),
    (_host_ports, "baseline", False),
    (_host_probes, "baseline", False),
    (_privileged, "baseline", False),
    (_proc_mount, "baseline", False),
    (_restricted_volumes, "restricted", False),
    (_run_as_non_root, "restricted", False),
    (_run_as_user, "restricted", False),
    (_selinux, "baseline", False),
    (_seccomp_baseline, "baseline", True),
    (_seccomp_restricted, "restricted", False),
    (_sysctls, "baseline", False),
    (_host_process, "baseline", False),
)


def violations(level: str, pod: JSON) -> list[tuple[str, str]]:
    """(reason, detail) of every check ``pod`` fails at ``level``, in kube-apiserver's order:
    the baseline checks, then (at restricted) the restricted ones."""
    if level == "privileged":
        return []
    meta: JSON = pod["metadata"] if isinstance(pod.get("metadata"), dict) else {}
    spec: JSON = pod["spec"] if isinstance(pod.get("spec"), dict) else {}
    order = [(c, lv, sup) for c, lv, sup in CHECKS if lv == "baseline" and
             not (sup and level == "restricted")]
    if level == "restricted":
        order += [(c, lv, sup) for c, lv, sup in CHECKS if lv == "restricted"]
    found = []
    for check, _, _ in order:
        result = check(meta, spec)
        if result is not None:
            found.append(result)
    return found


def describe(found: list[tuple[str, str]]) -> str:
    """``reason (detail), reason (detail)`` as the aggregated check result reads."""
    return ", ".join(f"{reason} ({detail})" if detail else reason for reason, detail in found)


def policy(labels: dict[str, str], mode: str) -> tuple[str, str]:
    """(level, version) of ``mode`` (enforce, warn, audit): unset is privileged:latest; a value
    that is not a level is restricted, the safe reading kube-apiserver takes of a bad label."""
    level = labels.get(LABEL + mode)
    version = labels.get(f"{LABEL}{mode}-version") or "latest"
    if level is None:
        return "privileged", version
    if level not in LEVELS:
        return "restricted", "latest"
    return level, version


class PodSecurityAdmission:
    """Checks pods created in a namespace against its ``pod-security.kubernetes.io`` labels."""

    def __init__(self, namespace_labels: Callable[[str], dict[str, str]]) -> None:
        self._namespace_labels = namespace_labels

    def validate(self, operation: str, group: str, plural: str, subresource: str | None,
                 pod: JSON, warnings: list[str]) -> None:
        """Raises the 403 of ``enforce``; appends the warnings of ``warn`` when admitted."""
        if operation != "CREATE" or group != "" or plural != "pods" or subresource:
            return
        meta = pod.get("metadata") or {}
        labels = self._namespace_labels(str(meta.get("namespace") or ""))
        level, version = policy(labels, "enforce")
        found = violations(level, pod)
        if found:
            raise E.forbidden_status("", "pods", str(meta.get("name") or ""),
                                     f'violates PodSecurity "{level}:{version}": '
                                     f"{describe(found)}")
        warn_level, warn_version = policy(labels, "warn")
        warned = violations(warn_level, pod)
        if warned:
            warnings.append(f'would violate PodSecurity "{warn_level}:{warn_version}": '
                            f"{describe(warned)}")
