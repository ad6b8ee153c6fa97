"""Hostile ids in every endpoint: 404 or 422, never a 500, and no file touched
outside the store (the whole test directory tree is compared before/after)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from checkpoint import CheckpointManager

from .conftest import API_TOKEN, write_checkpoints

HOSTILE = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2Fetc%2Fpasswd:0",
    "..%252F..%252Fetc%252Fpasswd",
    "..",
    "%2E%2E",
    "%2E%2E:0",
    "..%5C..%5Cwindows",
    "a" * 10_000,
    "a" * 10_000 + ":1",
    "job:" + "9" * 10_000,
    "j%C3%B6b",  # jöb
    "%E3%82%B8%E3%83%A7%E3%83%96:1",  # ジョブ:1
    "job%E2%80%AE:1",  # right-to-left override
    "job%00",
    "job%00:1",
    "job:1%00",
    "%00",
    "job%0A",
    "job:1%0A",
    "job%20:1",
    "%2Fabs%2Fpath:1",
    "job%3A1%2F..%2F..:2",
    "job;rm -rf:1",
    "%25%32%65%25%32%65",
    "-job:1",
]

ENDPOINTS = [
    ("GET", "/api/checkpoints/jobs/{}"),
    ("GET", "/api/checkpoints/tasks/{}"),
    ("GET", "/api/checkpoints/storage-info/{}"),
    ("POST", "/api/checkpoints/tasks/{}/force-checkpoint"),
]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def watched(tmp_path: Path, manager: CheckpointManager) -> Path:
    write_checkpoints(manager, "victim", 0, [30.0, 60.0])
    return tmp_path


async def test_hostile_ids(http: httpx.AsyncClient, watched: Path, store_root: Path) -> None:
    blobs_before = tree(store_root / "blobs")
    outside_before = {k: v for k, v in tree(watched).items() if not k.startswith("store/")}
    seen = set()
    for method, template in ENDPOINTS:
        for ident in HOSTILE:
            r = await http.request(method, template.format(ident),
                                   headers={"Authorization": f"Bearer {API_TOKEN}"})
            assert r.status_code in (404, 422), (method, template, ident[:40], r.status_code)
            assert r.headers["content-type"].startswith("application/json")
            assert len(r.content) < 4096  # the id is never echoed back in full
            seen.add(r.status_code)
    assert seen == {404, 422}
    assert tree(store_root / "blobs") == blobs_before
    outside_after = {k: v for k, v in tree(watched).items() if not k.startswith("store/")}
    assert outside_after == outside_before
    assert not Path("/etc/passwd.crowdcompute").exists()


async def test_victim_still_readable(http: httpx.AsyncClient, watched: Path) -> None:
    r = await http.get("/api/checkpoints/tasks/victim:0")
    assert r.status_code == 200 and r.json()["checkpoint_count"] == 2
