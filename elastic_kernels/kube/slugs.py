"""A user name as KubeSpawner writes it in object names: ``claim-{username}`` must name the same
PersistentVolumeClaim for a user's kernels as for the user's notebook server.

JupyterHub user names are free text (``Alice.Smith@example.com``, ``名前``); Kubernetes names are
lowercase DNS labels. KubeSpawner turns one into the other with one of two schemes (its
``slug_scheme``), and a template says which one its users' claims were made with
(``spec.usernameScheme``):

* ``safe`` (KubeSpawner 7's default, :func:`safe_slug`): a name that already is a valid DNS label
  of at most 48 characters, and has no ``--``, stays as it is; any other becomes its lowercase
  alphanumeric runs joined by ``-`` (at most 37 characters, starting with a letter, ``x-``
  prefixed otherwise), then ``---`` and the first 8 hex digits of its SHA-256.
* ``escape`` (KubeSpawner before 7, :func:`escape_slug`): every character that is not a lowercase
  ASCII letter or digit becomes ``-`` followed by the upper-case hex of each of its UTF-8 bytes
  (``escapism``'s rule, with ``-`` as the escape character), and the result is lowercased.

The rules are KubeSpawner's (``kubespawner/slugs.py``, ``KubeSpawner._expand_user_properties``);
``tests/test_user_volumes.py`` compares them with KubeSpawner's own results for tricky names.

Patterns (:func:`expand`) name the user with ``{username}`` (the template's scheme),
``{safe_username}`` or ``{escaped_username}`` (a scheme regardless of the template). There is no
placeholder for the raw name: it could put ``/`` or ``..`` in a path. ``{servername}`` is empty and
``{user_server}`` is ``{username}`` (the default server's), so KubeSpawner's claim templates
such as ``claim-{username}{servername}`` can be copied as they are. Any other ``{...}`` is an
error, found when the template is read (:func:`check_pattern`).
"""

from __future__ import annotations

import hashlib
import re
import string

__all__ = [
    "PLACEHOLDERS",
    "SCHEMES",
    "PatternError",
    "check_pattern",
    "escape_slug",
    "expand",
    "safe_slug",
    "user_slugs",
]

SCHEMES = ("safe", "escape")
PLACEHOLDERS = ("username", "safe_username", "escaped_username", "servername", "user_server")

_SAFE_CHARS = frozenset(string.ascii_lowercase + string.digits)
_OBJECT_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_HASH_LENGTH = 8
#: KubeSpawner's ``_slug_max_length`` for ``{username}``.
_SLUG_MAX_LENGTH = 48
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class PatternError(ValueError):
    """A pattern with an unknown placeholder; the message names it."""


def escape_slug(name: str) -> str:
    """KubeSpawner's legacy ``escape`` scheme (see the module docstring)."""
    out = []
    for char in name:
        if char in _SAFE_CHARS:
            out.append(char)
        else:
            out.extend(f"-{byte:X}" for byte in char.encode("utf-8"))
    return "".join(out).lower()


def _is_valid_object_name(name: str, max_length: int) -> bool:
    return 0 < len(name) <= min(63, max_length) and bool(_OBJECT_NAME.match(name))


def _strip_and_hash(name: str, max_length: int) -> str:
    name_length = max_length - (_HASH_LENGTH + 3)
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    safe = _NON_ALPHANUM.sub("-", name.lower())
    safe = safe.lstrip("-")[:name_length].rstrip("-")
    if safe and safe[0] not in string.ascii_lowercase:
        safe = "x-" + safe[: name_length - 2]
    return f"{safe or 'x'}---{digest}"


def safe_slug(name: str, max_length: int = _SLUG_MAX_LENGTH) -> str:
    """KubeSpawner 7's ``safe`` scheme for ``{username}`` (see the module docstring)."""
    if "--" not in name and _is_valid_object_name(name, max_length):
        return name
    return _strip_and_hash(name, max_length)


def user_slugs(username: str, scheme: str) -> dict[str, str]:
    """The values of the placeholders for ``username`` under ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"username scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    safe = safe_slug(username)
    escaped = escape_slug(username)
    return {
        "username": safe if scheme == "safe" else escaped,
        "safe_username": safe,
        "escaped_username": escaped,
        # A kernel belongs to its user, not to one of the user's named servers: the default
        # server's names, so that z2jh's "claim-{username}{servername}" names the same claim.
        "servername": "",
        "user_server": safe if scheme == "safe" else escaped,
    }


def check_pattern(pattern: str) -> None:
    """Raise PatternError if ``pattern`` uses a placeholder :func:`expand` does not know."""
    for match in _PLACEHOLDER.finditer(pattern):
        if match.group(1) not in PLACEHOLDERS:
            raise PatternError(
                f"unknown placeholder {{{match.group(1)}}} in {pattern!r}; known: "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            )


def expand(pattern: str, slugs: dict[str, str]) -> str:
    """``pattern`` with each known placeholder replaced by its value from ``slugs``.

    As KubeSpawner does, a trailing ``-`` the expansion produced is stripped (unless the pattern
    itself ends with ``-``); no slug of ours ends with one, so this only keeps the results equal.
    """
    check_pattern(pattern)
    result = _PLACEHOLDER.sub(lambda m: slugs[m.group(1)], pattern)
    if not pattern.endswith("-"):
        result = result.rstrip("-")
    return result
