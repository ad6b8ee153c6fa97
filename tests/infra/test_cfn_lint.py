"""cfn-lint passes on every CloudFormation template, and the ECS template
keeps the properties the checkpoint protocol depends on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _templates import AWS_TEMPLATES, EXPECTED_TEMPLATES, load_template
from cfnlint.api import lint_file


def test_every_template_is_present() -> None:
    assert {p.name for p in AWS_TEMPLATES} >= EXPECTED_TEMPLATES


@pytest.mark.parametrize("template", AWS_TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_reports_nothing(template: Path) -> None:
    matches = lint_file(template)
    assert [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches] == []


def _containers(resources: dict[str, Any], name: str) -> dict[str, Any]:
    """Container definitions of a task definition, by container name."""
    found = {}
    for item in resources[name]["Properties"]["ContainerDefinitions"]:
        if "Fn::If" in item:
            item = item["Fn::If"][1]
        found[item["Name"]] = item
    return found


def test_worker_outlives_its_shutdown_grace_on_spot() -> None:
    tpl = load_template("ecs.yaml")
    res = tpl["Resources"]
    worker = _containers(res, "WorkerTaskDefinition")["worker"]
    assert worker["StopTimeout"] == 120
    assert worker["Command"] == ["worker"]
    assert worker["LinuxParameters"]["InitProcessEnabled"] is True
    grace = tpl["Parameters"]["ShutdownGraceSeconds"]
    assert grace["MaxValue"] < worker["StopTimeout"]
    strategy = res["WorkerService"]["Properties"]["CapacityProviderStrategy"]
    assert {s["CapacityProvider"] for s in strategy if s["Weight"]} == {"FARGATE_SPOT"}
    assert res["WorkerScalableTarget"]["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"


def test_api_health_check_and_migration_command() -> None:
    res = load_template("ecs.yaml")["Resources"]
    assert res["ApiTargetGroup"]["Properties"]["HealthCheckPath"] == "/healthz"
    api = _containers(res, "ApiTaskDefinition")["api"]
    assert api["Command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert _containers(res, "MigrateTaskDefinition")["migrate"]["Command"] == ["db", "upgrade"]


def test_log_groups_have_retention() -> None:
    res = load_template("ecs.yaml")["Resources"]
    groups = [r for r in res.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert len(groups) == 3
    assert all("RetentionInDays" in g["Properties"] for g in groups)


def test_worker_s3_access_is_limited_to_the_checkpoint_prefix() -> None:
    res = load_template("ecs.yaml")["Resources"]
    for role, actions in (
        ("WorkerTaskRole", {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}),
        ("ApiTaskRole", {"s3:GetObject"}),
    ):
        statements = res[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        for st in statements:
            assert st["Effect"] == "Allow"
            assert "*" not in str(st["Action"])
            if st["Action"] == "s3:ListBucket":
                assert "s3:prefix" in st["Condition"]["StringLike"]
            elif "kms:Decrypt" in st["Action"]:
                assert st["Resource"] == {"Fn::ImportValue": {
                    "Fn::Sub": "${EnvironmentName}-CheckpointKeyArn"}}
                via = st["Condition"]["StringEquals"]["kms:ViaService"]
                assert via == {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}
            else:
                assert actions <= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
                assert "/${Prefix}/*" in st["Resource"]["Fn::Sub"][0]
