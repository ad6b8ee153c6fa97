"""All five stacks deploy, in the documented order, into one moto server's
CloudFormation (a real HTTP server on loopback, see ``_moto_cfn``); the
resources they create are then read back through the services' own APIs:
keys, encryption, HTTPS, access logs, Multi-AZ, secrets, and what each IAM
role may do (least privilege, evaluated by ``_iam``).

moto creates nothing for ``AWS::SecretsManager::SecretTargetAttachment``,
``AWS::ECS::ClusterCapacityProviderAssociations`` and the two
``AWS::ApplicationAutoScaling`` types; the last tests check those by structure.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from _iam import allows
from _moto_cfn import cfn_moto_server
from _templates import REPO, load_template

sys.path.insert(0, str(REPO / "tests"))
from _servers import free_port  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"
ORDER = ("network", "storage", "registry", "database", "ecs")
UNSUPPORTED_BY_MOTO = {
    "AWS::SecretsManager::SecretTargetAttachment",
    "AWS::ECS::ClusterCapacityProviderAssociations",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
}


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with cfn_moto_server(free_port()) as url:
        yield url


def _deploy(cfn: Any, name: str, parameters: dict[str, str]) -> dict[str, Any]:
    suffix = "" if parameters.get("EnvironmentName", "crowdcompute") == "crowdcompute" else (
        "-" + parameters["EnvironmentName"])
    return _deploy_as(cfn, name, f"crowdcompute-{name}{suffix}", parameters)


def _deploy_as(cfn: Any, name: str, stack_name: str, parameters: dict[str, str]) -> dict[str, Any]:
    """Create ``infra/aws/<name>.yaml`` as ``stack_name``; wait; describe it."""
    # JSON, because moto's YAML reader cannot parse the short form
    # `!ImportValue {"Fn::Sub": ...}`; the template is the same.
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(load_template(f"{name}.yaml")),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    for _ in range(60):
        (stack,) = cfn.describe_stacks(StackName=stack_name)["Stacks"]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            break
        time.sleep(0.5)
    resources = cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
    return {
        "status": stack["StackStatus"],
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        # Types moto creates nothing for have no physical id.
        "resources": {r["LogicalResourceId"]: r["PhysicalResourceId"]
                      for r in resources if "PhysicalResourceId" in r},
    }


@pytest.fixture(scope="module")
def stacks(endpoint: str) -> dict[str, dict[str, Any]]:
    cfn = _client("cloudformation", endpoint)
    certificate = _client("acm", endpoint).request_certificate(
        DomainName="api.crowdcompute.example")["CertificateArn"]
    parameters = {name: {} for name in ORDER}
    parameters["ecs"] = {"ImageTag": "t1", "TemporalAddress": "temporal.internal:7233",
                         "ApiCertificateArn": certificate}
    deployed = {name: _deploy(cfn, name, parameters[name]) for name in ORDER}
    deployed["ecs"]["certificate"] = certificate
    return deployed


def test_every_stack_deploys(stacks: dict[str, dict[str, Any]]) -> None:
    assert {name: s["status"] for name, s in stacks.items()} == {
        name: "CREATE_COMPLETE" for name in ORDER}


def test_network_spans_two_zones(stacks: dict[str, dict[str, Any]], endpoint: str) -> None:
    out = stacks["network"]["outputs"]
    ec2 = _client("ec2", endpoint)
    subnets = ec2.describe_subnets(
        SubnetIds=out["PublicSubnetIds"].split(",") + out["PrivateSubnetIds"].split(","))["Subnets"]
    assert {s["VpcId"] for s in subnets} == {out["VpcId"]}
    assert len({s["AvailabilityZone"] for s in subnets}) == 2
    assert {s["CidrBlock"] for s in subnets} == {
        "10.40.0.0/20", "10.40.16.0/20", "10.40.32.0/20", "10.40.48.0/20"}
    assert [s["MapPublicIpOnLaunch"] for s in subnets] == [False] * 4


def _customer_key(endpoint: str, key_id: str) -> dict[str, Any]:
    kms = _client("kms", endpoint)
    key = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (key["KeyManager"], key["KeyState"]) == ("CUSTOMER", "Enabled")
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
    return key


def test_registry_is_encrypted_with_its_own_key(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    (repo,) = _client("ecr", endpoint).describe_repositories(
        repositoryNames=["crowdcompute"])["repositories"]
    key = _customer_key(endpoint, stacks["registry"]["resources"]["RepositoryKey"])
    assert repo["encryptionConfiguration"] == {"encryptionType": "KMS", "kmsKey": key["Arn"]}
    assert repo["imageTagMutability"] == "IMMUTABLE"


def test_database_is_multi_az_with_iam_auth_and_monitoring(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    (db,) = _client("rds", endpoint).describe_db_instances(
        DBInstanceIdentifier=stacks["database"]["resources"]["Database"])["DBInstances"]
    assert (db["MultiAZ"], db["IAMDatabaseAuthenticationEnabled"]) == (True, True)
    assert (db["StorageEncrypted"], db["PubliclyAccessible"]) == (True, False)
    assert db["MonitoringInterval"] == 60
    assert db["MonitoringRoleArn"].endswith(stacks["database"]["resources"]["MonitoringRole"])
    assert load_template("database.yaml")["Parameters"]["MultiAZ"]["AllowedValues"] == [
        "true", "false"]


def test_secrets_are_encrypted_with_customer_keys(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    sm = _client("secretsmanager", endpoint)
    database_key = _customer_key(endpoint, stacks["database"]["outputs"]["SecretsKeyArn"])
    service_key = _customer_key(endpoint, stacks["ecs"]["resources"]["ServiceKey"])
    secrets = {
        stacks["database"]["outputs"]["MasterSecretArn"]: database_key["Arn"],
        stacks["database"]["outputs"]["DatabaseUrlSecretArn"]: database_key["Arn"],
        stacks["ecs"]["outputs"]["ApiTokenSecretArn"]: service_key["Arn"],
        stacks["ecs"]["outputs"]["ApiReadTokenSecretArn"]: service_key["Arn"],
    }
    assert {arn: sm.describe_secret(SecretId=arn)["KmsKeyId"] for arn in secrets} == secrets
    master = json.loads(sm.get_secret_value(
        SecretId=stacks["database"]["outputs"]["MasterSecretArn"])["SecretString"])
    assert master["username"] == "crowdcompute"
    assert len(master["password"]) == 40 and master["password"].isalnum()


def test_log_groups_are_encrypted_and_the_key_admits_only_them(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    groups = _client("logs", endpoint).describe_log_groups(
        logGroupNamePrefix="/crowdcompute/crowdcompute/")["logGroups"]
    key = _customer_key(endpoint, stacks["ecs"]["resources"]["ServiceKey"])
    assert {g["logGroupName"]: (g["kmsKeyId"], g["retentionInDays"]) for g in groups} == {
        f"/crowdcompute/crowdcompute/{name}": (key["Arn"], 30)
        for name in ("worker", "api", "migrate")}
    policy = json.loads(_client("kms", endpoint).get_key_policy(
        KeyId=key["KeyId"], PolicyName="default")["Policy"])
    logs = {"Service": f"logs.{REGION}.amazonaws.com"}
    (statement,) = [s for s in policy["Statement"] if s["Principal"] == logs]
    context = "kms:EncryptionContext:aws:logs:arn"
    pattern = statement["Condition"]["ArnLike"][context]
    assert pattern == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/crowdcompute/crowdcompute/*"


def test_api_is_https_only_and_logs_its_access(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    elb = _client("elbv2", endpoint)
    lb_arn = stacks["ecs"]["resources"]["LoadBalancer"]
    found = elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]
    listeners = {listener["Port"]: listener for listener in found}
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert (https["Protocol"], https["SslPolicy"]) == (
        "HTTPS", "ELBSecurityPolicy-TLS13-1-2-2021-06")
    assert https["Certificates"] == [{"CertificateArn": stacks["ecs"]["certificate"]}]
    assert [a["Type"] for a in https["DefaultActions"]] == ["forward"]
    (redirect,) = listeners[80]["DefaultActions"]
    assert redirect["Type"] == "redirect"
    assert {k: redirect["RedirectConfig"][k] for k in ("Protocol", "Port", "StatusCode")} == {
        "Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"}
    attributes = {a["Key"]: a["Value"] for a in elb.describe_load_balancer_attributes(
        LoadBalancerArn=lb_arn)["Attributes"]}
    assert {k: attributes[k] for k in attributes if k.startswith("access_logs.s3.")} == {
        "access_logs.s3.enabled": "true",
        "access_logs.s3.bucket": stacks["storage"]["outputs"]["LogBucketName"],
        "access_logs.s3.prefix": "alb",
    }
    assert stacks["ecs"]["outputs"]["ApiUrl"].startswith("https://")


def test_log_bucket_admits_the_load_balancer_logs_of_this_account(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    bucket = stacks["storage"]["outputs"]["LogBucketName"]
    policy = json.loads(_client("s3", endpoint).get_bucket_policy(Bucket=bucket)["Policy"])
    (statement,) = [s for s in policy["Statement"] if s.get("Sid") == "LoadBalancerAccessLogs"]
    # us-east-1 opened before August 2022: its Elastic Load Balancing account writes.
    assert statement["Principal"] == {"AWS": "arn:aws:iam::127311923021:root"}
    assert statement["Resource"] == f"arn:aws:s3:::{bucket}/alb/AWSLogs/{ACCOUNT}/*"


def test_api_task_binds_all_interfaces_and_gets_both_tokens(
    stacks: dict[str, dict[str, Any]], endpoint: str
) -> None:
    ecs = _client("ecs", endpoint)
    task = ecs.describe_task_definition(
        taskDefinition=stacks["ecs"]["resources"]["ApiTaskDefinition"])["taskDefinition"]
    (api,) = [c for c in task["containerDefinitions"] if c["name"] == "api"]
    assert api["command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    secrets = {s["name"]: s["valueFrom"] for s in api["secrets"]}
    out = stacks["ecs"]["outputs"]
    assert secrets == {
        "CROWDCOMPUTE_DATABASE_URL": stacks["database"]["outputs"]["DatabaseUrlSecretArn"],
        "CROWDCOMPUTE_API_TOKEN": out["ApiTokenSecretArn"],
        "CROWDCOMPUTE_API_READ_TOKEN": out["ApiReadTokenSecretArn"],
    }
    # the load balancer's X-Forwarded-For is trusted (the failed-token limit is per client)
    environment = {e["name"]: e["value"] for e in api["environment"]}
    assert environment["CROWDCOMPUTE_API_TRUSTED_PROXIES"] == stacks["network"]["outputs"]["VpcCidr"]


# ------------------------------------------------------------------ IAM
def _role_policies(endpoint: str, role: str) -> list[dict[str, Any]]:
    iam = _client("iam", endpoint)
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    documents = [iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names]
    return [json.loads(d) if isinstance(d, str) else d for d in documents]


@pytest.fixture(scope="module")
def roles(stacks: dict[str, dict[str, Any]], endpoint: str) -> dict[str, list[dict[str, Any]]]:
    resources = stacks["ecs"]["resources"]
    return {name: _role_policies(endpoint, resources[name]) for name in (
        "WorkerTaskRole", "ApiTaskRole",
        "WorkerExecutionRole", "ApiExecutionRole", "MigrateExecutionRole")}


def _s3_requests(bucket: str, log_bucket: str) -> dict[str, tuple[str, str]]:
    own = f"arn:aws:s3:::{bucket}/checkpoints/ckpt/t1/e1/s1/p0"
    return {
        "read": ("s3:GetObject", own),
        "write": ("s3:PutObject", own),
        "delete": ("s3:DeleteObject", own),
        "abort-upload": ("s3:AbortMultipartUpload", own),
        "write-outside-prefix": ("s3:PutObject", f"arn:aws:s3:::{bucket}/elsewhere/x"),
        "read-outside-prefix": ("s3:GetObject", f"arn:aws:s3:::{bucket}/elsewhere/x"),
        "read-log-bucket": ("s3:GetObject", f"arn:aws:s3:::{log_bucket}/alb/x"),
        "delete-bucket": ("s3:DeleteBucket", f"arn:aws:s3:::{bucket}"),
        "change-policy": ("s3:PutBucketPolicy", f"arn:aws:s3:::{bucket}"),
        "read-versions": ("s3:GetObjectVersion", own),
    }


def _granted(documents: list[dict[str, Any]], requests: dict[str, tuple[str, str]],
             context: dict[str, str] | None = None) -> set[str]:
    return {name for name, (action, resource) in requests.items()
            if allows(documents, action, resource, context)}


def test_workers_read_and_write_only_their_prefix(
    stacks: dict[str, dict[str, Any]], roles: dict[str, list[dict[str, Any]]]
) -> None:
    out = stacks["storage"]["outputs"]
    requests = _s3_requests(out["BucketName"], out["LogBucketName"])
    assert _granted(roles["WorkerTaskRole"], requests) == {
        "read", "write", "delete", "abort-upload"}


def test_api_only_reads_checkpoints(
    stacks: dict[str, dict[str, Any]], roles: dict[str, list[dict[str, Any]]]
) -> None:
    # Force-checkpoint is a row in the catalog, not an S3 or KMS write.
    out = stacks["storage"]["outputs"]
    requests = _s3_requests(out["BucketName"], out["LogBucketName"])
    assert _granted(roles["ApiTaskRole"], requests) == {"read"}


def test_listing_is_limited_to_the_prefix(
    stacks: dict[str, dict[str, Any]], roles: dict[str, list[dict[str, Any]]]
) -> None:
    bucket = stacks["storage"]["outputs"]["BucketArn"]
    for role in ("WorkerTaskRole", "ApiTaskRole"):
        docs = roles[role]
        assert allows(docs, "s3:ListBucket", bucket, {"s3:prefix": "checkpoints/ckpt/t1/"})
        assert not allows(docs, "s3:ListBucket", bucket, {"s3:prefix": "elsewhere/"})
        assert not allows(docs, "s3:ListBucket", bucket)


def test_checkpoint_key_is_usable_through_s3_only(
    stacks: dict[str, dict[str, Any]], roles: dict[str, list[dict[str, Any]]]
) -> None:
    key = stacks["storage"]["outputs"]["KeyArn"]
    via_s3 = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
    direct: dict[str, str] = {}
    worker, api = roles["WorkerTaskRole"], roles["ApiTaskRole"]
    assert allows(worker, "kms:GenerateDataKey", key, via_s3)
    assert allows(worker, "kms:Decrypt", key, via_s3)
    assert not allows(worker, "kms:Decrypt", key, direct)
    assert allows(api, "kms:Decrypt", key, via_s3)
    assert not allows(api, "kms:GenerateDataKey", key, via_s3)
    other_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
    assert not allows(worker, "kms:Decrypt", other_key, via_s3)


def test_each_task_family_reads_only_its_own_secrets(
    stacks: dict[str, dict[str, Any]], roles: dict[str, list[dict[str, Any]]]
) -> None:
    secrets = {
        "database-url": stacks["database"]["outputs"]["DatabaseUrlSecretArn"],
        "database-master": stacks["database"]["outputs"]["MasterSecretArn"],
        "api-token": stacks["ecs"]["outputs"]["ApiTokenSecretArn"],
        "api-read-token": stacks["ecs"]["outputs"]["ApiReadTokenSecretArn"],
    }
    readable = {
        role: {n for n, arn in secrets.items()
               if allows(roles[role], "secretsmanager:GetSecretValue", arn)}
        for role in ("WorkerExecutionRole", "ApiExecutionRole", "MigrateExecutionRole",
                     "WorkerTaskRole", "ApiTaskRole")
    }
    assert readable == {
        "WorkerExecutionRole": {"database-url"},
        "ApiExecutionRole": {"database-url", "api-token", "api-read-token"},
        "MigrateExecutionRole": {"database-url"},
        "WorkerTaskRole": set(),
        "ApiTaskRole": set(),
    }
    via_sm = {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}
    service_key = stacks["ecs"]["resources"]["ServiceKey"]
    service_key_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{service_key}"
    assert allows(roles["ApiExecutionRole"], "kms:Decrypt", service_key_arn, via_sm)
    assert not allows(roles["WorkerExecutionRole"], "kms:Decrypt", service_key_arn, via_sm)
    assert not allows(roles["ApiExecutionRole"], "kms:Decrypt", service_key_arn, {})


def test_only_the_registry_token_is_granted_on_every_resource(
    roles: dict[str, list[dict[str, Any]]]
) -> None:
    # GetAuthorizationToken has no resource to scope it to.
    wide = {
        (role, action)
        for role, docs in roles.items() for doc in docs for st in doc["Statement"]
        if "*" in ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"])
        for action in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    assert wide == {(role, "ecr:GetAuthorizationToken") for role in (
        "WorkerExecutionRole", "ApiExecutionRole", "MigrateExecutionRole")}


# ------------------------------------------------------ checked by structure
def test_moto_lacks_exactly_the_types_checked_by_structure() -> None:
    from moto.cloudformation.parsing import get_model_map

    used = {r["Type"] for name in ORDER for r in load_template(f"{name}.yaml")["Resources"].values()}
    # _moto_cfn adds BucketPolicy and Secret inside the server process only.
    missing = used - set(get_model_map()) - {"AWS::S3::BucketPolicy", "AWS::SecretsManager::Secret"}
    assert missing == UNSUPPORTED_BY_MOTO


def test_capacity_providers_and_worker_autoscaling_by_structure() -> None:
    res = load_template("ecs.yaml")["Resources"]
    providers = res["ClusterCapacityProviders"]["Properties"]
    assert providers["Cluster"] == {"Ref": "Cluster"}
    assert providers["CapacityProviders"] == ["FARGATE", "FARGATE_SPOT"]
    target = res["WorkerScalableTarget"]["Properties"]
    assert target["ResourceId"] == {"Fn::Sub": "service/${Cluster}/${WorkerService.Name}"}
    assert (target["ServiceNamespace"], target["ScalableDimension"]) == (
        "ecs", "ecs:service:DesiredCount")
    policy = res["WorkerCpuScaling"]["Properties"]
    assert policy["ScalingTargetId"] == {"Ref": "WorkerScalableTarget"}
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ECSServiceAverageCPUUtilization"}


def test_master_secret_attachment_by_structure() -> None:
    attachment = load_template("database.yaml")["Resources"]["MasterSecretAttachment"]["Properties"]
    assert attachment == {"SecretId": {"Ref": "MasterSecret"}, "TargetId": {"Ref": "Database"},
                          "TargetType": "AWS::RDS::DBInstance"}


# ------------------------------------------------------------ variants
def test_trial_database_has_no_standby_and_no_monitoring(endpoint: str) -> None:
    cfn = _client("cloudformation", endpoint)
    trial = {"EnvironmentName": "trial"}
    assert _deploy(cfn, "network", trial)["status"] == "CREATE_COMPLETE"
    database = _deploy(cfn, "database", {
        **trial, "MultiAZ": "false", "MonitoringIntervalSeconds": "0"})
    assert database["status"] == "CREATE_COMPLETE"
    assert "MonitoringRole" not in database["resources"]
    (db,) = _client("rds", endpoint).describe_db_instances(
        DBInstanceIdentifier=database["resources"]["Database"])["DBInstances"]
    assert (db["MultiAZ"], db["MonitoringInterval"]) == (False, 0)


def test_new_regions_admit_the_log_delivery_service(endpoint: str) -> None:
    # ca-west-1 opened after August 2022: no Elastic Load Balancing account.
    cfn = boto3.client("cloudformation", endpoint_url=endpoint, region_name="ca-west-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    storage = _deploy_as(cfn, "storage", "crowdcompute-storage-ca", {"EnvironmentName": "ca"})
    assert storage["status"] == "CREATE_COMPLETE"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="ca-west-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = storage["outputs"]["LogBucketName"]
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    (statement,) = [s for s in policy["Statement"] if s.get("Sid") == "LoadBalancerAccessLogs"]
    assert statement["Principal"] == {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
