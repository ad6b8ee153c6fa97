"""The storage stack deploys into moto's CloudFormation (a real HTTP server on
loopback) and the bucket it creates is encrypted, closed to the public and
carries the lifecycle rules that back up checkpoint garbage collection."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from _moto_cfn import cfn_moto_server
from _templates import INFRA, REPO

sys.path.insert(0, str(REPO / "tests"))
from _servers import free_port  # noqa: E402

REGION = "us-east-1"
EXPIRATION_DAYS = 9


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with cfn_moto_server(free_port()) as url:
        yield url


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def stack(endpoint: str) -> dict[str, str]:
    cfn = _client("cloudformation", endpoint)
    cfn.create_stack(
        StackName="crowdcompute-storage",
        TemplateBody=(INFRA / "aws" / "storage.yaml").read_text(),
        Parameters=[
            {"ParameterKey": "EnvironmentName", "ParameterValue": "cctest"},
            {"ParameterKey": "CheckpointExpirationDays", "ParameterValue": str(EXPIRATION_DAYS)},
        ],
    )
    cfn.get_waiter("stack_create_complete").wait(
        StackName="crowdcompute-storage", WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    (described,) = cfn.describe_stacks(StackName="crowdcompute-storage")["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}


def test_outputs_name_the_bucket_and_blob_url(stack: dict[str, str]) -> None:
    assert stack["BlobUrl"] == f"s3://{stack['BucketName']}/checkpoints"
    assert stack["CheckpointPrefix"] == "checkpoints"


def test_bucket_is_encrypted_with_the_stacks_key(stack: dict[str, str], endpoint: str) -> None:
    s3 = _client("s3", endpoint)
    enc = s3.get_bucket_encryption(Bucket=stack["BucketName"])
    (rule,) = enc["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": stack["KeyArn"]}
    key = _client("kms", endpoint).describe_key(KeyId=stack["KeyArn"])["KeyMetadata"]
    assert (key["KeyManager"], key["KeyState"]) == ("CUSTOMER", "Enabled")
    rotation = _client("kms", endpoint).get_key_rotation_status(KeyId=stack["KeyArn"])
    assert rotation["KeyRotationEnabled"] is True


def test_log_bucket_receives_the_access_logs(stack: dict[str, str], endpoint: str) -> None:
    s3 = _client("s3", endpoint)
    logging = s3.get_bucket_logging(Bucket=stack["BucketName"])["LoggingEnabled"]
    assert logging == {"TargetBucket": stack["LogBucketName"], "TargetPrefix": "s3/"}
    enc = s3.get_bucket_encryption(Bucket=stack["LogBucketName"])
    (rule,) = enc["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (expire,) = s3.get_bucket_lifecycle_configuration(Bucket=stack["LogBucketName"])["Rules"]
    assert expire["Expiration"] == {"Days": 90}


def test_versions_of_deleted_checkpoints_are_reclaimed_after_a_day(
    stack: dict[str, str], endpoint: str
) -> None:
    s3 = _client("s3", endpoint)
    assert s3.get_bucket_versioning(Bucket=stack["BucketName"])["Status"] == "Enabled"
    rules = {
        r["ID"]: r
        for r in s3.get_bucket_lifecycle_configuration(Bucket=stack["BucketName"])["Rules"]
    }
    noncurrent = rules["expire-noncurrent-versions"]
    assert noncurrent["Status"] == "Enabled"
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert noncurrent["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert noncurrent["Filter"].get("Prefix", "") == ""


def test_public_access_is_blocked_and_acls_disabled(stack: dict[str, str], endpoint: str) -> None:
    s3 = _client("s3", endpoint)
    pab = s3.get_public_access_block(Bucket=stack["BucketName"])
    assert pab["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    ownership = s3.get_bucket_ownership_controls(Bucket=stack["BucketName"])
    assert ownership["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_lifecycle_aborts_uploads_and_expires_checkpoints(
    stack: dict[str, str], endpoint: str
) -> None:
    s3 = _client("s3", endpoint)
    rules = {
        r["ID"]: r
        for r in s3.get_bucket_lifecycle_configuration(Bucket=stack["BucketName"])["Rules"]
    }
    abort = rules["abort-incomplete-multipart-uploads"]
    assert abort["Status"] == "Enabled"
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert abort["Filter"].get("Prefix", "") == ""
    expire = rules["expire-checkpoints"]
    assert expire["Status"] == "Enabled"
    assert expire["Expiration"] == {"Days": EXPIRATION_DAYS}
    assert expire["Filter"] == {"Prefix": "checkpoints/ckpt/"}
    payloads = rules["expire-payloads"]
    assert payloads["Status"] == "Enabled"
    assert payloads["Expiration"] == {"Days": 90}
    assert payloads["Filter"] == {"Prefix": "checkpoints/payloads/"}

