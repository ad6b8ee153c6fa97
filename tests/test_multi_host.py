"""One job spread over several hosts: the production topology in network namespaces.

A Temporal dev server, a PostgreSQL catalog, a moto S3 server and two worker
hosts each run in a network namespace of their own, joined by a bridge on a
private test subnet (``_netns``); this test process is the client, on the same
subnet. A checkpointed job runs on both worker hosts; then one worker host's
link is cut mid-job. Its tasks time out (no heartbeats reach Temporal) and
resume on the other host from their newest committed checkpoint; when the link
comes back, the cut host's attempts are zombies whose later commits the catalog
fences. The results are compared with an uninterrupted local run, and nothing
the winning attempts (or earlier ones) committed is left in the catalog or the
bucket afterwards (see docs/multi-host.md for what a late older attempt leaves).

Which host ran a step is read from the kernel: the pid in the step log (see
``ckpt_tasks``) is resolved to its network namespace while it runs, so the test
holds whether a worker runs tasks in its own process or in child processes.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import _netns
import boto3
import ckpt_tasks
import psycopg
import pytest
from _helpers import clean_env, wait_for

import sdk
from worker_app.dev import DEV_SERVER_ARGS, find_temporal_binary
from worker_app.settings import Settings
from workflows.models import task_id_for


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: the newest Debian one, else pg_config's."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                  key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        dirs.insert(0, Path(out.stdout.strip()))
    found = [d for d in dirs if (d / "initdb").is_file() and (d / "postgres").is_file()]
    return found[-1] if found else None


def unavailable() -> str | None:
    """Why this test cannot run here (None when it can)."""
    why = _netns.unavailable()
    if why is not None:
        return why
    if postgres_bin() is None:
        return "PostgreSQL server binaries (initdb, postgres) are not installed"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` user to run the PostgreSQL host as"
    return None


WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT)),
]
BUCKET = "crowdcompute-hosts"
PREFIX = "cc"
TEMPORAL_PORT = 7233
S3_PORT = 5000
STEPS = 800
STEP = 0.05
INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 3.0
TASKS = 6
WORKER_HOSTS = ("worker-a", "worker-b")
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Cluster:
    """The running hosts and the settings that point at their services."""

    net: _netns.Network
    settings: Settings  # the client's; workers get the same through the environment
    logs: Path
    workers: dict[str, Path]  # worker host name -> its output file

    @property
    def database_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    def worker_output(self, host: str) -> str:
        return self.workers[host].read_text(errors="replace")


def wait_port(address: str, port: int, what: str, proc: Any, timeout: float = 60) -> None:
    """Until ``address:port`` accepts a TCP connection from this (the client's) host."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on {address}:{port}") from None
            time.sleep(0.2)


def start_temporal(net: _netns.Network, logs: Path) -> str:
    host = net.add_host("temporal")
    # All addresses *of its namespace* (its eth0 and its own loopback): bound to the
    # eth0 address alone, the dev server's internal clients still dial 127.0.0.1:PORT
    # and its system workers and Nexus endpoint refresh fail ("connection refused").
    cmd = [find_temporal_binary(), "server", "start-dev", "--ip", "0.0.0.0",
           "--port", str(TEMPORAL_PORT), "--headless", "--log-level", "error", *DEV_SERVER_ARGS]
    proc = net.spawn(host, cmd, out=(logs / "temporal.log").open("ab"))
    wait_port(host.address, TEMPORAL_PORT, "temporal dev server", proc)
    return f"{host.address}:{TEMPORAL_PORT}"


def start_postgres(net: _netns.Network, logs: Path, data: Path) -> str:
    """A fresh cluster owned by the postgres user, trusting only the test subnet."""
    host = net.add_host("postgres")
    pg_bin = postgres_bin()
    assert pg_bin is not None
    os.chown(data, *_ids("postgres"))
    net.run(host, ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--clear-groups",
                   str(pg_bin / "initdb"), "-D", str(data / "db"), "-U", "cc", "-A", "reject",
                   "-E", "UTF8", "--no-sync"])
    with (data / "db" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all cc {net.subnet} trust\n")
    cmd = [str(pg_bin / "postgres"), "-D", str(data / "db"), "-c", f"listen_addresses={host.address}",
           "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200"]
    proc = net.spawn(host, cmd, out=(logs / "postgres.log").open("ab"), user="postgres")
    wait_port(host.address, 5432, "postgres", proc)
    return f"postgresql+psycopg://cc@{host.address}:5432/postgres"


def start_s3(net: _netns.Network, logs: Path) -> str:
    host = net.add_host("s3")
    cmd = [sys.executable, "-m", "moto.server", "-H", host.address, "-p", str(S3_PORT)]
    proc = net.spawn(host, cmd, out=(logs / "moto.log").open("ab"))
    url = f"http://{host.address}:{S3_PORT}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    boto3.client("s3", endpoint_url=url, **_aws()).create_bucket(Bucket=BUCKET)
    return url


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _aws() -> dict[str, str]:
    return {"aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": AWS_ENV["AWS_DEFAULT_REGION"]}


def start_workers(net: _netns.Network, settings: Settings, logs: Path) -> dict[str, Path]:
    """``db upgrade`` once, then one ``crowdcompute worker`` per worker host, each ready."""
    exe = str(Path(sys.executable).with_name("crowdcompute"))
    outs: dict[str, Path] = {}
    for name in WORKER_HOSTS:
        host = net.add_host(name)
        env = clean_env(**{
            **settings.child_env(), **AWS_ENV,
            "CROWDCOMPUTE_STATE_DIR": str(logs / f"{name}-state"),
            # blobs above 1 KiB go to S3: every checkpoint of these tasks does
            "CROWDCOMPUTE_DB_SIZE_LIMIT": "1024",
            "CROWDCOMPUTE_HEARTBEAT_INTERVAL": "0.5",
            "CROWDCOMPUTE_SHUTDOWN_GRACE_SECONDS": "5",
            # every task of the job fits on one host (task processes default to the cores)
            "CROWDCOMPUTE_MAX_CONCURRENT_TASKS": "8",
        })
        if not outs:
            net.run(host, [exe, "db", "upgrade"], env=env)
        outs[name] = logs / f"{name}.log"
        proc = net.spawn(host, [exe, "worker"], env=env, out=outs[name].open("ab"))
        deadline = time.monotonic() + 90
        while "worker ready" not in outs[name].read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {outs[name].read_text()[-4000:]}")
            time.sleep(0.2)
    return outs


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    # The postgres user must reach its data directory: not under root's private tmp_path.
    data = Path(tempfile.mkdtemp(prefix="cc-multihost-pg-"))
    try:
        with _netns.Network() as net:
            temporal = start_temporal(net, tmp_path)
            database_url = start_postgres(net, tmp_path, data)
            s3_url = start_s3(net, tmp_path)
            settings = Settings(
                temporal_address=temporal, task_queue=f"hosts-{uuid.uuid4().hex[:8]}",
                state_dir=tmp_path / "client-state", database_url=database_url,
                blob_url=f"s3://{BUCKET}/{PREFIX}", s3_endpoint_url=s3_url,
            )
            workers = start_workers(net, settings, tmp_path)
            yield Cluster(net, settings, tmp_path, workers)
    finally:
        shutil.rmtree(data, ignore_errors=True)


class Steps:
    """The step log of ``ckpt_tasks``, each line's pid resolved to the host it ran on."""

    def __init__(self, path: Path, net: _netns.Network) -> None:
        self.path = path
        self.net = net
        self.hosts: dict[int, str] = {}
        # task, attempt, host, kind ("start" | "step"), step number, when the line was read
        self.events: list[tuple[str, int, str, str, int, float]] = []
        self._read = 0
        self._grew = time.monotonic()

    def poll(self) -> None:
        """Read the new lines; a pid is resolved the first time it is seen (it is running)."""
        if not self.path.exists():
            return
        text = self.path.read_text()
        end = text.rfind("\n") + 1
        for line in text[self._read:end].splitlines():
            task, attempt, pid, kind, n = line.split()
            host = self.hosts.get(int(pid))
            if host is None:
                host = self.net.host_of(int(pid)) or "?"
                self.hosts[int(pid)] = host
            self.events.append((task, int(attempt), host, kind, int(n), time.monotonic()))
        if end > self._read:
            self._grew = time.monotonic()
        self._read = end

    def quiet_for(self) -> float:
        """Seconds since the log last grew (read now)."""
        self.poll()
        return time.monotonic() - self._grew

    def hosts_of(self, task: str) -> list[str]:
        return sorted({e[2] for e in self.events if e[0] == task and e[3] == "step"})

    def steps_on(self, task: str, host: str) -> int:
        return sum(1 for e in self.events if e[0] == task and e[2] == host and e[3] == "step")

    def starts(self, task: str) -> list[tuple[int, str, int]]:
        """(attempt, host, step) of every attempt that began running ``task``."""
        return [(e[1], e[2], e[4]) for e in self.events if e[0] == task and e[3] == "start"]

    def steps_after(self, host: str, since: float) -> int:
        """Steps ``host`` ran that were read after ``since`` (monotonic)."""
        return sum(1 for e in self.events if e[2] == host and e[3] == "step" and e[5] > since)

    def tasks(self) -> list[str]:
        return sorted({e[0] for e in self.events})


class Catalog:
    """Reads the PostgreSQL catalog; remembers every checkpoint row it ever saw."""

    def __init__(self, url: str, job_id: str) -> None:
        self.dsn = url.replace("postgresql+psycopg://", "postgresql://")
        self.job_id = job_id
        self.rows: set[tuple[str, int, int]] = set()  # task_id, seq, epoch

    def poll(self) -> None:
        with psycopg.connect(self.dsn, connect_timeout=5) as con:
            found = con.execute("SELECT task_id, seq, epoch FROM checkpoints WHERE job_id = %s",
                                (self.job_id,)).fetchall()
        self.rows.update((str(t), int(s), int(e)) for t, s, e in found)

    def epochs(self) -> dict[str, int]:
        with psycopg.connect(self.dsn, connect_timeout=5) as con:
            found = con.execute("SELECT task_id, epoch FROM tasks WHERE job_id = %s",
                                (self.job_id,)).fetchall()
        return {str(t): int(e) for t, e in found}

    def remaining(self) -> list[tuple[str, int, int]]:
        """The job's checkpoint rows now: (task_id, seq, epoch)."""
        with psycopg.connect(self.dsn, connect_timeout=5) as con:
            found = con.execute("SELECT task_id, seq, epoch FROM checkpoints WHERE job_id = %s",
                                (self.job_id,)).fetchall()
        return [(str(t), int(s), int(e)) for t, s, e in found]

    def committed_tasks(self) -> set[str]:
        return {t for t, _s, _e in self.rows}


def s3_keys(settings: Settings, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **_aws())
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def epochs_of_keys(keys: list[str]) -> list[tuple[str, int]]:
    """(task_id, epoch) of each checkpoint blob key ``…/{task}/e{epoch}/s{seq}/p{part}``."""
    found = [re.search(r"/([^/]+)/e(\d+)/s\d+/p\d+$", k) for k in keys]
    assert all(found), keys  # nothing else lives under the prefix after the job
    return [(unquote(m.group(1)), int(m.group(2))) for m in found if m]


def epoch_owners(output: str) -> dict[tuple[str, int], int]:
    """(task, attempt) -> the fencing epoch it took, from the workers' output."""
    found = re.findall(r"task '([^']+)' attempt (\d+) owns epoch (\d+)", output)
    return {(t, int(a)): int(e) for t, a, e in found}


def fenced(output: str) -> set[str]:
    """Tasks whose attempt a worker's output reports as fenced."""
    found = re.findall(r"task (\S+) attempt \d+ is fenced", output)
    return set(found)


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["step"] == want["step"]
    assert got["losses"] == want["losses"]
    assert got["w"].tobytes() == want["w"].tobytes()


async def test_job_spans_hosts_and_survives_a_cut_worker_link(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    net, settings = cluster.net, cluster.settings
    job_id = f"hosts-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "steps.log"
    items = [{"seed": 31 + i, "steps": STEPS, "step_seconds": STEP, "log": str(log)}
             for i in range(TASKS)]
    steps = Steps(log, net)
    catalog = Catalog(cluster.database_url, job_id)
    ckpt_keys: set[str] = set()

    async def watch() -> None:
        # Every committed row and stored object the job ever had, seen as it runs.
        while True:
            steps.poll()
            await asyncio.to_thread(catalog.poll)
            ckpt_keys.update(await asyncio.to_thread(s3_keys, settings, f"{PREFIX}/ckpt/"))
            await asyncio.sleep(0.2)

    await sdk.connect(settings=settings)
    job = await sdk.submit(ckpt_tasks.train_numpy, items, checkpoint_interval=INTERVAL,
                           heartbeat_timeout=HEARTBEAT_TIMEOUT, max_attempts=10, job_id=job_id)
    watcher = asyncio.create_task(watch())
    try:
        # Every task runs and has committed a checkpoint before the cut.
        await wait_for(lambda: len(steps.tasks()) == TASKS
                       and len(catalog.committed_tasks()) == TASKS, timeout=90)
        # Where each task's newest attempt runs.
        before = {t: max(steps.starts(t))[1] for t in steps.tasks()}
        assert set(before.values()) <= set(WORKER_HOSTS), before
        # Temporal hands the tasks to whichever poll it matches: usually both hosts get
        # some, but not always. Cut the busier host; the other then runs tasks anyway.
        victim, survivor = sorted(WORKER_HOSTS, key=lambda h: -list(before.values()).count(h))
        cut = sorted(t for t, h in before.items() if h == victim)
        cut_attempt = {t: max(a for a, _h, _n in steps.starts(t)) for t in cut}
        epochs_before = await asyncio.to_thread(catalog.epochs)

        net.set_link(net.hosts[victim], up=False)
        cut_at = time.monotonic()
        # The cut host's tasks time out and resume on the survivor from a checkpoint.
        await wait_for(lambda: all(any(h == survivor and n > 0 for _a, h, n in steps.starts(t))
                                   for t in cut), timeout=90)
        resumed_after = time.monotonic() - cut_at
        # Let the new attempts commit under their new epochs, then heal the link.
        await wait_for(lambda: all(any(t2 == t and e > epochs_before[t]
                                       for t2, _s, e in catalog.rows) for t in cut), timeout=30)
        net.set_link(net.hosts[victim], up=True)
        healed_at = time.monotonic()
        results = await asyncio.wait_for(job.result(), 180)
        # The zombies stop once their host is back: fenced at their next commit, or
        # stopped by their worker when a heartbeat tells it the attempt is gone (each
        # task runs in a process of its own that the worker kills; DESIGN.md §3a).
        async def victim_stopped() -> bool:
            ran = steps.steps_after(victim, healed_at)
            await asyncio.sleep(5.0)
            steps.poll()
            return steps.steps_after(victim, healed_at) == ran

        await wait_for(victim_stopped, timeout=90, every=0.5)
        stopped_after = time.monotonic() - healed_at
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    task_ids = sorted(catalog.committed_tasks())
    assert task_ids == sorted(task_id_for(job_id, i) for i in range(TASKS))
    for cfg, got in zip(items, results, strict=True):
        assert_same_state(got, ckpt_tasks.reference_numpy(cfg))
    for index, got in enumerate(results):
        task = task_id_for(job_id, index)
        if task not in cut:
            continue
        # The cut host kept computing offline and its attempt would return the same
        # numbers; the result that won is the newest attempt's, which resumed from a
        # committed checkpoint (its start step), not from zero.
        attempt, _host, start = max(steps.starts(task))
        assert attempt > cut_attempt[task], steps.starts(task)
        assert start > 0 and got["resumed_from"] == start, (got["resumed_from"], steps.starts(task))
        assert 0 < steps.steps_on(task, survivor) < STEPS
    assert {h for t in task_ids for h in steps.hosts_of(t)} == set(WORKER_HOSTS)
    # No stale epoch ever won: per task, the epochs of its committed rows never go
    # down as seq goes up (a zombie's commit after the retry's would break this).
    for task in task_ids:
        rows = sorted((s, e) for t, s, e in catalog.rows if t == task)
        assert [e for _s, e in rows] == sorted(e for _s, e in rows), (task, rows)
    assert all(max(e for t2, _s, e in catalog.rows if t2 == t) > epochs_before[t] for t in cut)
    assert ckpt_keys, "no checkpoint blob ever reached S3"
    print(f"\nbefore the cut {before}; cut {victim}: its {len(cut)} tasks resumed on {survivor} "
          f"{resumed_after:.1f} s after the cut; {victim} ran {steps.steps_after(victim, healed_at)} "
          f"steps after its link came back and stopped within {stopped_after:.0f} s "
          f"({len(fenced(cluster.worker_output(victim)) & set(cut))} fenced at a commit); "
          f"final (attempt, host, start step): "
          f"{ {t: max(steps.starts(t)) for t in cut} }")

    # Afterwards: once every attempt anywhere has ended (the zombies finish their
    # steps offline), nothing that the winning attempts or any attempt before them
    # committed is left, neither catalog rows nor objects under the prefix.
    await wait_for(lambda: "deleted checkpoints of job" in cluster.worker_output(survivor)
                   + cluster.worker_output(victim), timeout=60)
    await wait_for(lambda: steps.quiet_for() > 3.0, timeout=120)
    owners = epoch_owners(cluster.worker_output(victim) + cluster.worker_output(survivor))
    winner = {t: max(a for a, _h, _n in steps.starts(t)) for t in task_ids}
    won = {t: owners[(t, winner[t])] for t in task_ids}
    left = sorted({(t, e) for t, _s, e in await asyncio.to_thread(catalog.remaining)}
                  | set(epochs_of_keys(await asyncio.to_thread(s3_keys, settings, f"{PREFIX}/"))))
    assert [(t, e) for t, e in left if e <= won[t]] == []
    # What may be left comes from an older attempt that began after the winner (its
    # activity task reached the cut host's open poll and was delivered when the link
    # came back): it takes a newer epoch and commits after the job's cleanup. A
    # product bug, see docs/multi-host.md; nothing else may remain.
    late = {(t, e) for (t, a), e in owners.items() if a < winner[t] and e > won[t]}
    assert set(left) <= late, (left, late)
    print(f"late older attempts {sorted(late)}; left behind by them: {left}")
