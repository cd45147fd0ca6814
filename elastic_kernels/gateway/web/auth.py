"""Who is calling: tokens mapped to users, each user possibly an admin.

A gateway serves many users' notebook servers, and every kernel belongs to the user who started
it (see :mod:`~elastic_kernels.gateway.web.ownership`). So a token is not just "let me in": it
names a user. Each user's notebook server (JupyterLab) reaches the gateway with *its own* token,
the one set as that server's ``GatewayClient.auth_token`` (``--GatewayClient.auth_token`` or
``JUPYTER_GATEWAY_AUTH_TOKEN``); one token per notebook server therefore means one gateway user
per notebook server, and a user can reach only the kernels their own server started.

Tokens come from three places, merged into one table, and optionally from JupyterHub:

* ``--token`` / ``$ELASTIC_KERNELS_TOKEN`` (jupyter_server's ``IdentityProvider.token``): the
  operator's token, an **admin** named ``admin_username`` (``admin``). When neither a users file
  nor a users Secret is configured and no token is given, one is generated and printed once, as
  before. With users configured, no token is generated: admins are whoever the users list says.
* ``users_file``: a YAML or JSON file (e.g. a mounted Secret or ConfigMap); re-read when it
  changes (checked at most every ``users_file_check_interval`` seconds, on requests). Removing
  it revokes its tokens (at the second check that finds it missing).
* ``users_secret``: a Kubernetes Secret in the gateway's namespace whose ``users_secret_key``
  item (``users.yaml``) holds the same document. It is watched (``metadata.name`` field
  selector, so RBAC can restrict the gateway to that one Secret with ``resourceNames``):
  adding, rotating or revoking a token takes effect without a restart.

* ``hub_api_url``: a JupyterHub. A token that is in none of the above is asked of the hub
  (:mod:`~elastic_kernels.gateway.web.hubauth`, JupyterHub's own ``HubAuth``, cached briefly):
  a single-user server that presents its ``$JUPYTERHUB_API_TOKEN`` is its user, an admin if the
  hub says so or if the user is in one of ``hub_admin_groups``. The table above is checked first,
  so the operator's token and a users file keep working beside the hub.

The document::

    tokens:
      - user: alice
        tokenSha256: 5e88...        # sha256 hex of the token: the file need not hold the token
      - user: bob
        token: "s3cret-token-of-bob-at-least-16-chars"
      - user: ops
        tokenSha256: 9f86...
        admin: true                 # sees and acts on every user's kernels; default false

A user may have several tokens (rotation). Make a hash with
``printf %s "$TOKEN" | sha256sum``. A document that does not validate is refused as a whole,
with a message naming the entry and field (never a token): at startup the gateway exits; on a
later change the previous table stays in force and the error is logged.

Comparison is constant-time: the offered token is hashed with SHA-256 and compared with
``hmac.compare_digest`` against *every* entry, without stopping at a match, so the time taken says
nothing about which or how many characters matched. No login cookies are set or accepted: the
gateway is an API for programs, and a cookie would outlive a revoked token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

import yaml
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Bool, Float, Int, List, Unicode, default, observe

from elastic_kernels.kube.client import SECRETS, JSON, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.kube.informer import Informer
from elastic_kernels.upstream import default_token

from .hubauth import HubUsers

__all__ = [
    "TOKEN_ENV",
    "ElasticIdentityProvider",
    "ElasticUser",
    "TokenEntry",
    "UsersFileError",
    "hash_token",
    "parse_users",
]

TOKEN_ENV = "ELASTIC_KERNELS_TOKEN"
HUB_API_URL_ENV = "ELASTIC_KERNELS_HUB_API_URL"
HUB_API_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
DEFAULT_HUB_SERVICE = "elastic-kernels-gateway"

USERNAME_MAX_CHARS = 128
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_ENTRY_KEYS = frozenset({"user", "token", "tokenSha256", "admin"})


class UsersFileError(ValueError):
    """A users document that cannot be used. The message names the place, never a token."""


@dataclass
class ElasticUser(User):
    """A jupyter_server user with a role: admins see and act on every user's kernels."""

    admin: bool = False


@dataclass(frozen=True)
class TokenEntry:
    """One accepted token, known only by its SHA-256 digest."""

    digest: bytes
    user: str
    admin: bool
    source: str


def hash_token(token: str) -> str:
    """The ``tokenSha256`` value for ``token`` (hex of SHA-256 over its UTF-8 bytes)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _check_username(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsersFileError(f"{where}: 'user' must be a non-empty string")
    if len(value) > USERNAME_MAX_CHARS:
        raise UsersFileError(f"{where}: 'user' is longer than {USERNAME_MAX_CHARS} characters")
    if not value.isprintable() or value != value.strip():
        raise UsersFileError(
            f"{where}: 'user' must be printable, without leading or trailing spaces"
        )
    return value


def parse_users(
    document: str | bytes, source: str, min_token_length: int = 16
) -> tuple[list[TokenEntry], set[str]]:
    """Validate a users document; return its entries and the plaintext tokens it held.

    The plaintext tokens are returned only so that logs can be scrubbed of them.
    """
    try:
        doc = yaml.safe_load(document)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        # The YAML error text may quote the document (and so a token): say only where.
        raise UsersFileError(f"{source}: not valid YAML or JSON{where}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise UsersFileError(f"{source}: must be a mapping with a 'tokens' list")
    extra = sorted(str(k) for k in doc if k != "tokens")
    if extra:
        raise UsersFileError(f"{source}: unknown top-level keys: {', '.join(extra)}")
    entries: dict[bytes, TokenEntry] = {}
    plaintext: set[str] = set()
    for index, item in enumerate(doc["tokens"]):
        where = f"{source}: tokens[{index}]"
        if not isinstance(item, dict):
            raise UsersFileError(f"{where}: must be a mapping with 'user' and a token")
        unknown = sorted(str(k) for k in item if k not in _ENTRY_KEYS)
        if unknown:
            raise UsersFileError(
                f"{where}: unknown keys {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(_ENTRY_KEYS))})"
            )
        user = _check_username(item.get("user"), where)
        where = f"{where} (user {user!r})"
        admin = item.get("admin", False)
        if not isinstance(admin, bool):
            raise UsersFileError(f"{where}: 'admin' must be true or false")
        has_token, has_hash = "token" in item, "tokenSha256" in item
        if has_token == has_hash:
            raise UsersFileError(f"{where}: give exactly one of 'token' and 'tokenSha256'")
        if has_token:
            token = item["token"]
            if not isinstance(token, str) or len(token) < min_token_length:
                raise UsersFileError(
                    f"{where}: 'token' must be a string of at least {min_token_length} characters"
                )
            if not token.isprintable() or token != token.strip():
                raise UsersFileError(f"{where}: 'token' must be printable, without spaces at "
                                     "either end")
            digest = _digest(token)
            plaintext.add(token)
        else:
            hashed = item["tokenSha256"]
            if not isinstance(hashed, str) or not _SHA256_HEX.match(hashed):
                raise UsersFileError(f"{where}: 'tokenSha256' must be 64 hexadecimal digits")
            digest = bytes.fromhex(hashed)
        previous = entries.get(digest)
        if previous is not None and (previous.user, previous.admin) != (user, admin):
            raise UsersFileError(
                f"{where}: the same token is also given to user {previous.user!r}"
            )
        entries[digest] = TokenEntry(digest, user, admin, source)
    return list(entries.values()), plaintext


class ElasticIdentityProvider(IdentityProvider):
    """Token → user (and admin role) for the gateway; see the module docstring."""

    admin_username = Unicode(
        "admin", config=True,
        help="User name of whoever presents the gateway token (--token / $ELASTIC_KERNELS_TOKEN);"
        " that user is an admin.",
    )
    users_file = Unicode(
        "", config=True,
        help="YAML or JSON file of {tokens: [{user, token | tokenSha256, admin}]}: one token per "
        "user's notebook server. Re-read when it changes.",
    )
    users_file_check_interval = Float(
        10.0, config=True,
        help="At most this often (seconds), a request checks whether users_file changed "
        "(0: read it only at startup).",
    )
    users_secret = Unicode(
        "", config=True,
        help="Name of a Kubernetes Secret (in users_secret_namespace) whose users_secret_key item "
        "holds the same document as users_file. Watched: changes apply without a restart.",
    )
    users_secret_key = Unicode(
        "users.yaml", config=True, help="Item of users_secret that holds the users document."
    )
    users_secret_namespace = Unicode(
        "", config=True, help="Namespace of users_secret (default: the gateway's namespace)."
    )
    min_token_length = Int(
        16, config=True,
        help="Shortest plaintext token accepted in a users document (hashes are always 256 bit).",
    )
    hub_api_url = Unicode(
        config=True,
        help="JupyterHub's API URL (e.g. http://hub:8081/hub/api; default "
        f"${HUB_API_URL_ENV}). When set, a token not in the users table is asked of the hub: "
        "a single-user server's $JUPYTERHUB_API_TOKEN names its user.",
    )
    hub_api_token = Unicode(
        config=True,
        help=f"The gateway's own JupyterHub service token (default ${HUB_API_TOKEN_ENV}). Users' "
        "tokens are checked with themselves; this one is HubAuth's api_token.",
    )
    hub_api_token_file = Unicode(
        "", config=True,
        help="A file (e.g. a mounted Secret) holding hub_api_token; read at startup.",
    )
    hub_service_name = Unicode(
        DEFAULT_HUB_SERVICE, config=True,
        help="The gateway's service name in JupyterHub's c.JupyterHub.services.",
    )
    hub_access_scopes = List(
        Unicode(), default_value=None, allow_none=True, config=True,
        help="A hub token must hold one of these scopes (default: "
        "access:services!service=<hub_service_name>); [] accepts any token of a user.",
    )
    hub_admins = Bool(
        True, config=True, help="JupyterHub admins are gateway admins.",
    )
    hub_admin_groups = List(
        Unicode(), config=True,
        help="Members of these JupyterHub groups are gateway admins.",
    )
    hub_cache_seconds = Int(
        60, config=True,
        help="How long the hub's answer about a token (yes or no) is kept; a token the hub "
        "revoked keeps working at most this long.",
    )

    @default("hub_api_url")
    def _hub_api_url_default(self) -> str:
        return os.environ.get(HUB_API_URL_ENV, "")

    @default("hub_api_token")
    def _hub_api_token_default(self) -> str:
        return os.environ.get(HUB_API_TOKEN_ENV, "")

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._table: tuple[TokenEntry, ...] = ()
        self._sources: dict[str, list[TokenEntry]] = {}
        self._plaintext: dict[str, set[str]] = {}
        self._seen_tokens: set[str] = set()
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_checked = 0.0
        self._file_missing = False
        self._secret_informer: Informer | None = None
        self._secret_version: str | None = None
        self._hub: HubUsers | None = None
        self._set_admin_token()
        if self.hub_api_url:
            try:
                self._hub = self._make_hub()
            except (OSError, RuntimeError, ValueError) as e:
                self.log.critical("Cannot use JupyterHub users: %s", _file_problem(e))
                raise SystemExit(1) from None
        if self.users_file:
            try:
                self._load_file()
            except (OSError, UsersFileError) as e:
                self.log.critical("Cannot use the users file: %s", _file_problem(e))
                raise SystemExit(1) from None

    # -- the admin token ------------------------------------------------------------------------

    @default("token")
    def _elastic_token_default(self) -> str:
        value = os.environ.get(TOKEN_ENV, "")
        if value:
            self.token_generated = False
            return value
        if self.users_file or self.users_secret or self.hub_api_url:
            # Users are configured: nobody should be an admin by a token nobody chose.
            if not (os.environ.get("JUPYTER_TOKEN") or os.environ.get("JUPYTER_TOKEN_FILE")):
                self.token_generated = False
                return ""
        return default_token(self)

    @observe("token", "admin_username")
    def _admin_changed(self, change: t.Any) -> None:
        if hasattr(self, "_sources"):
            self._set_admin_token()

    def _set_admin_token(self) -> None:
        token = self.token
        if token:
            entry = TokenEntry(_digest(token), self.admin_username, True, "token")
            self._set_source("token", [entry], set() if self.token_generated else {token})
        else:
            self._set_source("token", [], set())

    # -- JupyterHub ---------------------------------------------------------------------------

    def _make_hub(self) -> HubUsers:
        token = self.hub_api_token
        if self.hub_api_token_file:
            token = Path(self.hub_api_token_file).read_text().strip()
        if token:
            self._plaintext["hub"] = {token}
        scopes = self.hub_access_scopes
        if scopes is None:
            scopes = [f"access:services!service={self.hub_service_name}"]
        return HubUsers(
            api_url=self.hub_api_url, api_token=token, access_scopes=scopes,
            admin_groups=self.hub_admin_groups, hub_admins=self.hub_admins,
            cache_seconds=self.hub_cache_seconds,
        )

    # -- sources ------------------------------------------------------------------------------

    def _set_source(self, name: str, entries: list[TokenEntry], plaintext: set[str]) -> None:
        self._sources[name] = entries
        self._plaintext[name] = plaintext
        merged: dict[bytes, TokenEntry] = {}
        refused: set[bytes] = set()
        for source_entries in self._sources.values():
            for entry in source_entries:
                other = merged.get(entry.digest)
                if other is not None and (other.user, other.admin) != (entry.user, entry.admin):
                    # Two sources disagree about whose token this is: trust neither.
                    self.log.error(
                        "The same token is given to user %r by %s and to user %r by %s; "
                        "refusing it", other.user, other.source, entry.user, entry.source,
                    )
                    refused.add(entry.digest)
                merged.setdefault(entry.digest, entry)
        self._table = tuple(e for d, e in merged.items() if d not in refused)

    def _load_file(self) -> None:
        path = Path(self.users_file)
        st = path.stat()
        text = path.read_bytes()
        entries, plaintext = parse_users(text, f"users file {path}", self.min_token_length)
        self._file_stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        self._set_source("file", entries, plaintext)
        self.log.info("Users file %s: %d token(s) for %d user(s)", path, len(entries),
                      len({e.user for e in entries}))

    def _maybe_reload_file(self) -> None:
        """Re-read users_file if it changed; a bad new version leaves the old table in force."""
        if not self.users_file or self.users_file_check_interval <= 0:
            return
        now = time.monotonic()
        if now - self._file_checked < self.users_file_check_interval:
            return
        self._file_checked = now
        try:
            st = os.stat(self.users_file)
        except FileNotFoundError:
            self._file_gone()
            return
        except OSError as e:
            self.log.error("Users file %s: %s; keeping the tokens read before",
                           self.users_file, e.strerror)
            return
        self._file_missing = False
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._file_stamp:
            return
        try:
            self._load_file()
        except (OSError, UsersFileError) as e:
            self.log.error("Users file changed but cannot be used (%s); keeping the tokens read "
                           "before", _file_problem(e))
            self._file_stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def _file_gone(self) -> None:
        """A removed users file revokes its tokens, at the second check that finds it missing.

        Removing the file is how an admin revokes everyone in it; keeping its tokens would
        leave them working until the next restart. One check interval of grace covers an
        editor or a tool that replaces the file by removing it first.
        """
        if not self._file_missing:
            self._file_missing = True
            self.log.warning("Users file %s is missing; its tokens stop working if it is still "
                             "missing at the next check", self.users_file)
            return
        if self._sources.get("file") or self._file_stamp is not None:
            self.log.warning("Users file %s was removed; its tokens no longer work",
                             self.users_file)
            self._file_stamp = None
            self._set_source("file", [], set())

    def _load_secret(self, secret: JSON | None) -> None:
        name = f"Secret {self._secret_where()}"
        if secret is None:
            if self._sources.get("secret"):
                self.log.warning("Users %s is gone; its tokens no longer work", name)
            self._secret_version = None
            self._set_source("secret", [], set())
            return
        version = str((secret.get("metadata") or {}).get("resourceVersion") or "")
        if version and version == self._secret_version:
            return
        self._secret_version = version
        raw = (secret.get("data") or {}).get(self.users_secret_key)
        if raw is None:
            self.log.error("Users %s has no item %r; its tokens are not used", name,
                           self.users_secret_key)
            self._set_source("secret", [], set())
            return
        try:
            text = base64.b64decode(raw, validate=True)
            entries, plaintext = parse_users(text, f"users {name} item {self.users_secret_key}",
                                             self.min_token_length)
        except (binascii.Error, UsersFileError) as e:
            if isinstance(e, binascii.Error):
                e = UsersFileError(f"users {name}: item {self.users_secret_key} is not base64")
            if self._sources.get("secret"):
                self.log.error("%s; keeping the tokens read before", e)
            else:
                self.log.error("%s; no tokens are taken from it", e)
            return
        self._set_source("secret", entries, plaintext)
        self.log.info("Users %s: %d token(s) for %d user(s)", name, len(entries),
                      len({e.user for e in entries}))

    def _secret_where(self) -> str:
        ns = self.users_secret_namespace
        if not ns and ClusterConnection.initialized():
            try:
                ns = ClusterConnection.instance().default_namespace
            except Exception:  # noqa: BLE001 - only for a message
                ns = ""
        return f"{ns}/{self.users_secret}" if ns else self.users_secret

    async def start_watching(self) -> None:
        """Watch users_secret (the gateway calls this before serving)."""
        if not self.users_secret or self._secret_informer is not None:
            return
        conn = ClusterConnection.instance()
        ns = self.users_secret_namespace or conn.default_namespace
        informer = Informer(
            conn.client, SECRETS, ns, field_selector=f"metadata.name={self.users_secret}",
            resync_seconds=conn.resync_seconds,
        )
        self._secret_informer = informer

        def changed(event_type: str, obj: JSON, old: JSON | None) -> None:
            if (obj.get("metadata") or {}).get("name") != self.users_secret:
                return
            self._load_secret(None if event_type == "DELETED" else obj)

        informer.add_listener(changed)
        try:
            await informer.start(wait=True, timeout=conn.sync_timeout)
        except KubeError as e:
            self.log.error("Cannot read users Secret %s yet (%s); retrying in the background",
                           self._secret_where(), e)
            return
        secret = informer.get(self.users_secret, ns)
        if secret is None:
            self.log.warning("Users Secret %s does not exist (yet); its tokens will work once "
                             "it is created", self._secret_where())
        self._load_secret(secret)

    async def stop_watching(self) -> None:
        informer, self._secret_informer = self._secret_informer, None
        if informer is not None:
            await informer.stop()

    # -- authentication -------------------------------------------------------------------------

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry for ``token``, compared in constant time against every entry."""
        if not token:
            return None
        digest = _digest(token)
        found: TokenEntry | None = None
        for entry in self._table:  # no early exit: the time spent does not depend on a match
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found

    async def get_user_token(self, handler: web.RequestHandler) -> User | None:
        self._maybe_reload_file()
        offered = self.get_token(handler)
        if not offered:
            return None
        entry = self.lookup(offered)
        if entry is not None:
            self._seen(offered)
            return ElasticUser(username=entry.user, admin=entry.admin)
        if self._hub is None:
            return None
        hub_user = await self._hub.user_for_token(offered)
        if hub_user is None:
            return None
        try:
            name = _check_username(hub_user.name, "JupyterHub user")
        except UsersFileError as e:
            self.log.warning("Refusing a JupyterHub token: %s", e)
            return None
        self._seen(offered)
        return ElasticUser(username=name, admin=hub_user.admin)

    def _seen(self, token: str) -> None:
        if token not in self._seen_tokens:
            self._seen_tokens.add(token)  # so that logs can be scrubbed of it, see redact.py

    def get_user_cookie(self, handler: web.RequestHandler) -> User | None:
        return None  # tokens only: a cookie would outlive a revoked token

    def set_login_cookie(self, handler: web.RequestHandler, user: User) -> None:
        """No cookies (see get_user_cookie)."""

    @property
    def login_available(self) -> bool:
        return False  # a headless API: no login page

    # -- what others ask ------------------------------------------------------------------------

    @property
    def users(self) -> dict[str, bool]:
        """Known users and whether each is an admin (through at least one of their tokens)."""
        result: dict[str, bool] = {}
        for entry in self._table:
            result[entry.user] = result.get(entry.user, False) or entry.admin
        return result

    def secret_values(self) -> set[str]:
        """Token values to scrub from logs: configured plaintext ones and those seen in use.

        A generated token is left out: it is printed once, on purpose, at startup.
        """
        values = set(self._seen_tokens)
        for plaintext in self._plaintext.values():
            values.update(plaintext)
        if self.token and not self.token_generated:
            values.add(self.token)
        elif self.token:
            values.discard(self.token)
        return values

    def describe(self) -> str:
        """How requests are authenticated, for the startup line (never a configured token)."""
        if self.token and self.token_generated:
            head = f"generated token: {self.token} (set {TOKEN_ENV} to choose one)"
        else:
            head = "token required"
        where = []
        if self.token and not self.token_generated:
            where.append(f"admin token for {self.admin_username!r}")
        if self.users_file:
            where.append(f"users file {self.users_file}")
        if self.users_secret:
            where.append(f"users Secret {self._secret_where()}")
        if self._hub is not None:
            where.append(self._hub.describe())
        if not self.token and not where:
            where.append("none configured: every request is refused")
        return "; ".join([head, *where])


def _file_problem(e: BaseException) -> str:
    if isinstance(e, OSError):
        return f"{e.filename}: {e.strerror}"
    return str(e)
