"""Shared helpers for the infrastructure tests: where the files are and how
to read CloudFormation YAML (short-form tags such as ``!Ref`` included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
AWS_TEMPLATES = sorted((INFRA / "aws").glob("*.yaml"))
EXPECTED_TEMPLATES = {"network.yaml", "storage.yaml", "registry.yaml", "database.yaml", "ecs.yaml"}


def load_template(name: str) -> dict[str, Any]:
    """Parse ``infra/aws/<name>`` into plain dicts (intrinsics as ``{"Ref": ...}``)."""
    return cfn_yaml.load(str(INFRA / "aws" / name))
