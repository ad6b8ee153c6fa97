"""The security scanners a deploying team runs find nothing: checkov on the
CloudFormation templates (every skip carries a written reason) and hadolint
on the image's Dockerfile, whose installs are all pinned by
``infra/constraints.txt``.

checkov pins its dependencies exactly (boto3, botocore, networkx, packaging)
to versions older than the project's, so it gets an environment of its own
next to the test interpreter's (``<sys.prefix>/tools/<requirement>``), built
on first use from the ``scan`` extra of pyproject.toml.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
from _templates import AWS_TEMPLATES, INFRA, REPO
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXPECTED_SKIPS = {("CKV_AWS_18", "AWS::S3::Bucket.LogBucket"),
                  ("CKV_AWS_21", "AWS::S3::Bucket.LogBucket")}


def _checkov_requirement() -> str:
    (requirement,) = PYPROJECT["project"]["optional-dependencies"]["scan"]
    return str(requirement)


def _checkov() -> Path:
    """The checkov executable of its own environment, built once."""
    requirement = _checkov_requirement()
    home = Path(sys.prefix) / "tools" / re.sub(r"[^A-Za-z0-9.]+", "-", requirement)
    done = home / ".complete"
    home.parent.mkdir(parents=True, exist_ok=True)
    # Two test runs at once: the second waits for the first one's build.
    with open(home.parent / f"{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
            subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q",
                            requirement], check=True, timeout=1200)
            done.write_text(requirement + "\n")
    return home / "bin" / "checkov"


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    run = subprocess.run(
        [str(_checkov()), "-d", str(INFRA / "aws"), "--framework", "cloudformation",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600,
    )
    report = json.loads(run.stdout)
    assert isinstance(report, dict), run.stderr[-2000:]
    return report


@pytest.mark.timeout(1500)
def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    failed = [f"{c['check_id']} {c['resource']} {c['file_path']}"
              for c in checkov_report["results"]["failed_checks"]]
    assert (failed, checkov_report["summary"]["parsing_errors"]) == ([], 0)


def test_checkov_scanned_every_template(checkov_report: dict[str, Any]) -> None:
    scanned = {c["file_path"].lstrip("/") for c in checkov_report["results"]["passed_checks"]}
    assert scanned == {p.name for p in AWS_TEMPLATES}
    assert checkov_report["summary"]["passed"] >= 100


def test_checkov_skips_are_the_justified_ones(checkov_report: dict[str, Any]) -> None:
    skipped = checkov_report["results"]["skipped_checks"]
    assert {(c["check_id"], c["resource"]) for c in skipped} == EXPECTED_SKIPS
    comments = [c["check_result"].get("suppress_comment", "") for c in skipped]
    assert [len(c) >= 40 for c in comments] == [True] * len(skipped)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    run = subprocess.run([str(hadolint), "--no-color", str(INFRA / "Dockerfile")],
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_every_direct_dependency_within_pyproject() -> None:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    pins = _constraints()
    for spec in project["dependencies"] + extras["s3"] + extras["postgres"]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert requirement.specifier.contains(pins[name], prereleases=True), spec
    build = Requirement(PYPROJECT["build-system"]["requires"][0])
    assert build.specifier.contains(pins["setuptools"])


def test_every_pip_install_in_the_image_is_constrained() -> None:
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install ([^;&\n]+)", text)
    assert len(installs) == 4
    for args in installs:
        # The one unconstrained install is torch itself, pinned, without dependencies.
        constrained = "--constraint /tmp/constraints.txt" in args
        assert constrained or ("--no-deps" in args and '"torch==2.13.0"' in args), args
    assert "COPY infra/constraints.txt /tmp/constraints.txt" in text
