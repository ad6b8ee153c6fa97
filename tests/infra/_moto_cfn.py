"""A moto server whose CloudFormation deploys every CrowdCompute stack.

This module runs the real moto server (``python tests/infra/_moto_cfn.py -H
HOST -p PORT``) after closing the gaps of moto's CloudFormation that the
templates hit, each through moto's own backends (the calls the service APIs
make), never by faking a result:

- ``AWS::S3::Bucket`` applies ``BucketEncryption`` and ``Tags`` only;
  ``PublicAccessBlockConfiguration``, ``OwnershipControls``,
  ``LifecycleConfiguration``, ``VersioningConfiguration`` and
  ``LoggingConfiguration`` are applied here (logging through moto's own check
  that the target bucket's policy admits the S3 logging service).
- ``AWS::S3::BucketPolicy`` and ``AWS::SecretsManager::Secret`` have no
  CloudFormation model in moto; small ones here call PutBucketPolicy and
  CreateSecret (with the generated password and the KMS key).
- ``Fn::Cidr`` is not evaluated by moto; it is here, with ``ipaddress``.
- ``AWS::NoValue`` stays in lists and properties as ``None`` in moto; it
  removes the item or property here, as in CloudFormation.
- ``AWS::ElasticLoadBalancingV2::LoadBalancer`` drops
  ``LoadBalancerAttributes``; they are applied here.
- ``AWS::ECR::Repository`` and ``AWS::Logs::LogGroup`` read their
  encryption properties under the API's spelling, ``AWS::IAM::Role`` stores
  inline policies as a Python repr, ``AWS::RDS::DBInstance``
  ignores ``EnableIAMDatabaseAuthentication``, ``MonitoringInterval`` and
  ``MonitoringRoleArn``; they are translated or applied here.
- ``AWS::KMS::Key`` keeps ``KeyPolicy`` as a dict that moto's own key
  policy check cannot parse; it is passed as JSON here.
- ``Ref`` of an ``AWS::RDS::DBParameterGroup`` yields moto's object instead
  of the group's name; it yields the name here.

Resource types still without a model are created as nothing (moto warns):
``AWS::SecretsManager::SecretTargetAttachment``,
``AWS::ECS::ClusterCapacityProviderAssociations``,
``AWS::ApplicationAutoScaling::ScalableTarget`` and ``ScalingPolicy``; the
tests check those by structure. Property names are passed through as
written, so a misspelt property still fails (cfn-lint checks the schema).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_ACCOUNT_DEFAULT_PARTITION = "aws"
# Log bucket name -> (source bucket, logging configuration) awaiting its policy.
_PENDING_LOGGING: dict[str, list[tuple[str, dict[str, str]]]] = {}


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """One CloudFormation lifecycle rule in the shape of the S3 API's XML."""
    api: dict[str, Any] = {"ID": rule.get("Id"), "Status": rule["Status"]}
    api["Filter"] = {"Prefix": rule.get("Prefix", "")}
    if "ExpirationInDays" in rule:
        api["Expiration"] = {"Days": str(rule["ExpirationInDays"])}
    if "ExpiredObjectDeleteMarker" in rule:
        api["Expiration"] = {"ExpiredObjectDeleteMarker": str(rule["ExpiredObjectDeleteMarker"]).lower()}
    if "NoncurrentVersionExpiration" in rule:
        days = rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
        api["NoncurrentVersionExpiration"] = {"NoncurrentDays": str(days)}
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        api["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": str(days)}
    unknown = set(rule) - {"Id", "Status", "Prefix", "ExpirationInDays",
                           "ExpiredObjectDeleteMarker", "NoncurrentVersionExpiration",
                           "AbortIncompleteMultipartUpload"}
    if unknown:
        raise ValueError(f"lifecycle rule properties not translated: {sorted(unknown)}")
    return api


def _install_bucket_properties() -> None:
    from moto.s3.models import FakeBucket, s3_backends

    original = FakeBucket.create_from_cloudformation_json.__func__

    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kw):
        bucket = original(cls, resource_name, cloudformation_json, account_id,
                          region_name, **kw)
        props = cloudformation_json.get("Properties", {})
        backend = s3_backends[account_id][_ACCOUNT_DEFAULT_PARTITION]
        if "PublicAccessBlockConfiguration" in props:
            pab = {k: str(v).lower() for k, v in props["PublicAccessBlockConfiguration"].items()}
            backend.put_public_access_block(bucket.name, pab)
        if "OwnershipControls" in props:
            (rule,) = props["OwnershipControls"]["Rules"]
            backend.put_bucket_ownership_controls(bucket.name, rule["ObjectOwnership"])
        if "LifecycleConfiguration" in props:
            rules = [_lifecycle_rule(r) for r in props["LifecycleConfiguration"]["Rules"]]
            backend.put_bucket_lifecycle_configuration(bucket.name, rules)
        if "VersioningConfiguration" in props:
            backend.put_bucket_versioning(bucket.name, props["VersioningConfiguration"]["Status"])
        if "LoggingConfiguration" in props:
            logging = props["LoggingConfiguration"]
            target = logging["DestinationBucketName"]
            config = {"TargetBucket": target, "TargetPrefix": logging.get("LogFilePrefix", "")}
            # moto resolves the Outputs before it walks DependsOn, so the log
            # bucket's policy may come later; S3's permission check runs then.
            if backend.get_bucket(target).policy:
                backend.put_bucket_logging(bucket.name, config)
            else:
                _PENDING_LOGGING.setdefault(target, []).append((bucket.name, config))
        return bucket

    FakeBucket.create_from_cloudformation_json = classmethod(create)


def _install_models() -> None:
    """CloudFormation models for two resource types moto's parser lacks."""
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel
    from moto.s3.models import s3_backends
    from moto.secretsmanager.models import secretsmanager_backends

    # moto's model metaclass names the service after the second part of the
    # module path.
    class BucketPolicy(CloudFormationModel):
        __module__ = "moto.s3.models"

        def __init__(self, bucket: str) -> None:
            self.physical_resource_id = bucket

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::S3::BucketPolicy"

        @classmethod
        def create_from_cloudformation_json(cls, resource_name, cloudformation_json,
                                            account_id, region_name, **kw):
            props = cloudformation_json["Properties"]
            backend = s3_backends[account_id][_ACCOUNT_DEFAULT_PARTITION]
            backend.put_bucket_policy(props["Bucket"], json.dumps(props["PolicyDocument"]).encode())
            for source, config in _PENDING_LOGGING.pop(props["Bucket"], []):
                backend.put_bucket_logging(source, config)
            return cls(props["Bucket"])

    class Secret(CloudFormationModel):
        __module__ = "moto.secretsmanager.models"

        def __init__(self, arn: str) -> None:
            self.physical_resource_id = arn

        @staticmethod
        def cloudformation_name_type() -> str:
            return "Name"

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::SecretsManager::Secret"

        @classmethod
        def create_from_cloudformation_json(cls, resource_name, cloudformation_json,
                                            account_id, region_name, **kw):
            props = cloudformation_json["Properties"]
            backend = secretsmanager_backends[account_id][region_name]
            value = props.get("SecretString")
            if "GenerateSecretString" in props:
                gen = props["GenerateSecretString"]
                password = json.loads(backend.get_random_password(
                    password_length=gen.get("PasswordLength", 32),
                    exclude_characters=gen.get("ExcludeCharacters", ""),
                    exclude_numbers=False, exclude_punctuation=gen.get("ExcludePunctuation", False),
                    exclude_uppercase=False, exclude_lowercase=False, include_space=False,
                    require_each_included_type=True,
                ))["RandomPassword"]
                if "SecretStringTemplate" in gen:
                    value = json.dumps({**json.loads(gen["SecretStringTemplate"]),
                                        gen["GenerateStringKey"]: password})
                else:
                    value = password
            created = json.loads(backend.create_secret(
                name=props.get("Name", resource_name), secret_string=value, secret_binary=None,
                description=props.get("Description"), tags=props.get("Tags"),
                kms_key_id=props.get("KmsKeyId"), client_request_token=None,
                replica_regions=[], force_overwrite=False,
            ))
            return cls(created["ARN"])

    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
    assert parsing.get_model_map()["AWS::SecretsManager::Secret"] is Secret
    assert parsing.get_model_map()["AWS::S3::BucketPolicy"] is BucketPolicy


def _install_key_policy_json() -> None:
    """moto's KMS keeps a CloudFormation ``KeyPolicy`` as a dict, then its
    policy check (every KMS call) parses it as JSON; pass it as JSON."""
    from moto.kms.models import Key

    original = Key.create_from_cloudformation_json.__func__

    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kw):
        props = cloudformation_json["Properties"]
        if isinstance(props.get("KeyPolicy"), dict):
            props = {**props, "KeyPolicy": json.dumps(props["KeyPolicy"])}
        return original(cls, resource_name, {**cloudformation_json, "Properties": props},
                        account_id, region_name, **kw)

    Key.create_from_cloudformation_json = classmethod(create)


def _install_load_balancer_attributes() -> None:
    """Apply ``LoadBalancerAttributes`` (moto drops them) through
    ModifyLoadBalancerAttributes, which rejects unknown keys."""
    from moto.elbv2.models import FakeLoadBalancer, elbv2_backends

    original = FakeLoadBalancer.create_from_cloudformation_json.__func__

    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kw):
        balancer = original(cls, resource_name, cloudformation_json, account_id,
                            region_name, **kw)
        attributes = cloudformation_json["Properties"].get("LoadBalancerAttributes", [])
        elbv2_backends[account_id][region_name].modify_load_balancer_attributes(
            balancer.arn, {a["Key"]: a["Value"] for a in attributes})
        return balancer

    FakeLoadBalancer.create_from_cloudformation_json = classmethod(create)


def _wrap_properties(model: Any, translate: Any) -> None:
    """Make ``model``'s CloudFormation handler see ``translate(properties)``."""
    original = model.create_from_cloudformation_json.__func__

    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kw):
        props = translate(dict(cloudformation_json.get("Properties", {})))
        return original(cls, resource_name, {**cloudformation_json, "Properties": props},
                        account_id, region_name, **kw)

    model.create_from_cloudformation_json = classmethod(create)


def _install_property_names() -> None:
    """Properties moto's handlers read under the service API's spelling, or
    not at all: ECR and log group encryption, IAM inline policies, RDS IAM
    authentication and enhanced monitoring."""
    from moto.ecr.models import Repository
    from moto.iam.models import Role
    from moto.logs.models import LogGroup
    from moto.rds.models import DBInstance

    def ecr(props: dict[str, Any]) -> dict[str, Any]:
        if "EncryptionConfiguration" in props:
            enc = props["EncryptionConfiguration"]
            props["EncryptionConfiguration"] = {
                "encryptionType": enc["EncryptionType"], **(
                    {"kmsKey": enc["KmsKey"]} if "KmsKey" in enc else {})}
        return props

    def logs(props: dict[str, Any]) -> dict[str, Any]:
        if "KmsKeyId" in props:
            props["kmsKeyId"] = props.pop("KmsKeyId")
        return props

    def role(props: dict[str, Any]) -> dict[str, Any]:
        # Inline policies as JSON; moto would store the dict's repr.
        props["Policies"] = [{**p, "PolicyDocument": json.dumps(p["PolicyDocument"])}
                             for p in props.get("Policies", [])]
        return props

    _wrap_properties(Repository, ecr)
    _wrap_properties(LogGroup, logs)
    _wrap_properties(Role, role)

    original = DBInstance.create_from_cloudformation_json.__func__

    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kw):
        db = original(cls, resource_name, cloudformation_json, account_id, region_name, **kw)
        props = cloudformation_json["Properties"]
        db.enable_iam_database_authentication = bool(
            props.get("EnableIAMDatabaseAuthentication", False))
        db.monitoring_interval = int(props.get("MonitoringInterval", 0))
        db.monitoring_role_arn = props.get("MonitoringRoleArn")
        return db

    DBInstance.create_from_cloudformation_json = classmethod(create)


def _install_parameter_group_ref() -> None:
    """``Ref`` of a DB parameter group is its name (moto returns the object)."""
    from moto.rds.models import DBParameterGroup

    DBParameterGroup.physical_resource_id = property(lambda self: self.name)


def _install_cidr() -> None:
    """Evaluate ``Fn::Cidr`` (moto passes it through as a dict)."""
    from moto.cloudformation import parsing

    original = parsing.clean_json

    def clean_json(resource_json, resources_map):
        if isinstance(resource_json, list):
            # AWS::NoValue (None here) removes a list item ...
            items = (clean_json(item, resources_map) for item in resource_json)
            return [item for item in items if item is not None]
        if not isinstance(resource_json, dict):
            return original(resource_json, resources_map)
        if "Fn::Cidr" in resource_json:
            block, count, bits = (clean_json(v, resources_map) for v in resource_json["Fn::Cidr"])
            net = ipaddress.ip_network(block)
            subnets = net.subnets(new_prefix=net.max_prefixlen - int(bits))
            return [str(next(subnets)) for _ in range(int(count))]
        cleaned = original(resource_json, resources_map)
        if isinstance(cleaned, dict) and not any(k == "Ref" or k.startswith("Fn::")
                                                 for k in resource_json):
            # ... and a property.
            return {k: v for k, v in cleaned.items() if v is not None}
        return cleaned

    parsing.clean_json = clean_json


def _install() -> None:
    _install_bucket_properties()
    _install_models()
    _install_key_policy_json()
    _install_load_balancer_attributes()
    _install_property_names()
    _install_parameter_group_ref()
    _install_cidr()


@contextmanager
def cfn_moto_server(port: int) -> Iterator[str]:
    """Run this module as a moto server on ``127.0.0.1:port``; yield its URL."""
    from _servers import moto_server  # tests/ is on the path in the tests, not in the server

    with moto_server([sys.executable, __file__], port) as url:
        yield url


if __name__ == "__main__":
    _install()
    from moto.server import main

    main(sys.argv[1:])
