"""A moto server whose CloudFormation applies every S3 bucket property the
storage template uses.

moto's ``AWS::S3::Bucket`` handler applies ``BucketEncryption`` and ``Tags``
only; ``PublicAccessBlockConfiguration``, ``OwnershipControls`` and
``LifecycleConfiguration`` are accepted and dropped. This module runs the real
moto server (``python tests/infra/_moto_cfn.py -H HOST -p PORT``) after
extending that handler to apply those three properties through moto's own S3
backend, the same calls PutPublicAccessBlock / PutBucketOwnershipControls /
PutBucketLifecycleConfiguration make. Property names are passed through as
written, so a misspelt property still fails (cfn-lint checks the schema).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_ACCOUNT_DEFAULT_PARTITION = "aws"


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """One CloudFormation lifecycle rule in the shape of the S3 API's XML."""
    api: dict[str, Any] = {"ID": rule.get("Id"), "Status": rule["Status"]}
    api["Filter"] = {"Prefix": rule.get("Prefix", "")}
    if "ExpirationInDays" in rule:
        api["Expiration"] = {"Days": str(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        api["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": str(days)}
    unknown = set(rule) - {"Id", "Status", "Prefix", "ExpirationInDays",
                           "AbortIncompleteMultipartUpload"}
    if unknown:
        raise ValueError(f"lifecycle rule properties not translated: {sorted(unknown)}")
    return api


def _install() -> None:
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
        return bucket

    FakeBucket.create_from_cloudformation_json = classmethod(create)


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
