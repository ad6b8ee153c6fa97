"""The local topology (infra/compose.yaml) and the ECS task definitions set
only settings that ``worker_app.settings.Settings`` knows, and the image they
run is built from files that exist and reach the build context."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import pytest
import yaml
from _templates import INFRA, REPO, load_template

from worker_app.settings import Settings

PREFIX = "CROWDCOMPUTE_"


def _known_settings() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix.upper() == PREFIX
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names.add((alias or prefix + name).upper())
    return names


def _compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return env


def _is_crowdcompute(service: dict[str, Any]) -> bool:
    build = service.get("build")
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return dockerfile.endswith("infra/Dockerfile") or "crowdcompute" in service.get("image", "")


def _crowdcompute_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if _is_crowdcompute(s)}


def test_compose_has_the_production_topology() -> None:
    services = _compose()["services"]
    assert {"postgresql", "temporal", "temporal-ui", "minio", "minio-init",
            "migrate", "worker-1", "worker-2", "api"} <= set(services)
    assert "8233:8080" in " ".join(services["temporal-ui"]["ports"])
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    commands = {n: s.get("command") for n, s in _crowdcompute_services().items()}
    assert commands == {
        "migrate": ["db", "upgrade"],
        "worker-1": ["worker"],
        "worker-2": ["worker"],
        "api": ["api", "--host", "0.0.0.0", "--port", "8000"],
    }


def test_workers_start_after_the_migration() -> None:
    services = _compose()["services"]
    for name in ("worker-1", "worker-2", "api"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


@pytest.mark.parametrize("name", sorted(_crowdcompute_services()))
def test_compose_sets_only_known_settings(name: str) -> None:
    service = _crowdcompute_services()[name]
    assert "env_file" not in service
    env = _environment(service)
    crowdcompute = {k for k in env if k.startswith(PREFIX)}
    assert crowdcompute - _known_settings() == set()
    assert {k for k in env if not k.startswith((PREFIX, "AWS_"))} == set()
    assert {"CROWDCOMPUTE_DATABASE_URL", "CROWDCOMPUTE_BLOB_URL"} <= crowdcompute
    assert env["CROWDCOMPUTE_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_unknown_setting_is_caught() -> None:
    service = {"environment": ["CROWDCOMPUTE_NOT_A_SETTING=1", "AWS_REGION=x"]}
    assert {k for k in _environment(service) if k.startswith(PREFIX)} - _known_settings() == {
        "CROWDCOMPUTE_NOT_A_SETTING"
    }


def _ecs_variables() -> dict[str, set[str]]:
    """Environment and secret names of each container that runs crowdcompute."""
    found: dict[str, set[str]] = {}
    for res in load_template("ecs.yaml")["Resources"].values():
        if res["Type"] != "AWS::ECS::TaskDefinition":
            continue
        for item in res["Properties"]["ContainerDefinitions"]:
            if "Fn::If" in item or "EntryPoint" in item:
                continue  # the mTLS init container runs /bin/sh, not crowdcompute
            names = set()
            for entry in item.get("Environment", []) + item.get("Secrets", []):
                entry = entry["Fn::If"][1] if "Fn::If" in entry else entry
                names.add(entry["Name"])
            found[item["Name"]] = names
    return found


def test_ecs_task_definitions_set_only_known_settings() -> None:
    variables = _ecs_variables()
    assert set(variables) == {"worker", "api", "migrate"}
    known = _known_settings()
    for container, names in variables.items():
        assert {n for n in names if n.startswith(PREFIX)} - known == set(), container
        assert {n for n in names if not n.startswith((PREFIX, "AWS_"))} == set(), container
        assert "CROWDCOMPUTE_DATABASE_URL" in names


def _dockerignore_excludes(path: str) -> bool:
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            excluded = not negate
    return excluded


def test_dockerfile_copies_only_what_exists_and_is_in_the_context() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER 10001", text, re.M)
    assert 'ENTRYPOINT ["crowdcompute"]' in text and 'CMD ["worker"]' in text
    assert "ARG WITH_TORCH=0" in text
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    sources = []
    for args in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        sources += args.split()[:-1]
    assert "pyproject.toml" in sources
    missing = [s for s in sources if not (REPO / s).exists()]
    ignored = [s for s in sources if _dockerignore_excludes(s)]
    assert (missing, ignored) == ([], [])
