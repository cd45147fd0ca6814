"""The guides' examples are valid: YAML objects pass the same judges as the manifests, and every
repository path and command flag they mention exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elastic_kernels.cull import build_parser as cull_parser

from .manifests import REPO, cr_problems, crd_schemas, is_custom, load_docs, validate_builtin

pytestmark = pytest.mark.timeout(30)

GUIDES = [REPO / "docs" / "admin-guide.md", REPO / "docs" / "user-guide.md"]


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_example_objects_are_valid(guide: Path) -> None:
    schemas = crd_schemas()
    checked = 0
    for block in yaml_blocks(guide.read_text()):
        for doc in load_docs(block, guide.name):
            if "apiVersion" not in doc or doc.get("kind") in ("Kustomization", None):
                continue
            if is_custom(doc):
                assert cr_problems(doc, schemas) == [], doc["metadata"]
            else:
                validate_builtin(doc)
            checked += 1
    if guide.name == "admin-guide.md":
        assert checked >= 2  # the GPU kernelspec and the ResourceQuota


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_paths_the_guides_mention_exist(guide: Path) -> None:
    text = guide.read_text()
    paths = set(re.findall(r"`((?:deploy|docs|kernelspecs|launchers|tests)/[^`\s]*)`", text))
    for path in paths:
        if "<" in path:
            continue
        assert list(REPO.glob(path.rstrip("/"))), path


def test_cull_command_in_the_guide_parses() -> None:
    text = (REPO / "docs" / "admin-guide.md").read_text()
    line = re.search(r"^\s*elastic-kernels cull (.*?)\s+#", text, re.M)
    assert line
    args = cull_parser().parse_args(line.group(1).split())
    assert args.dry_run and args.namespace == "elastic-kernels"
