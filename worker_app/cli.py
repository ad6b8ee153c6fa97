"""The ``crowdcompute`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoint.errors import CheckpointError
from worker_app.settings import Settings, SettingsError, load_settings


def _count(text: str) -> int:
    """A whole number of at least 0, for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdcompute", description="Durable Python map jobs on Temporal.")
    sub = p.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run Temporal, workers (and the API) on this machine")
    dev.add_argument("--state-dir", type=Path)
    dev.add_argument("--port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233)
    dev.add_argument("--api-port", type=int, default=8000)
    dev.add_argument("--workers", type=_count, default=1, metavar="N",
                     help="workers to start (default 1; 0: Temporal and the API only, for "
                          "workers run elsewhere with `crowdcompute worker`)")
    dev.add_argument("--codec-port", type=int, default=8081,
                     help="port of the codec server the UI decodes payloads with")
    worker = sub.add_parser("worker", help="run a worker (configured by CROWDCOMPUTE_* variables)")
    worker.add_argument("--max-tasks", type=int, metavar="N",
                        help="tasks run at once, one process each (default: "
                             "CROWDCOMPUTE_MAX_CONCURRENT_TASKS, else the number of cores)")
    s = sub.add_parser("submit", help="submit a job")
    s.add_argument("function", metavar="MODULE:FUNC")
    s.add_argument("--items", required=True, type=Path, help="JSON file with a list of items")
    s.add_argument("--checkpoint-interval", type=float)
    s.add_argument("--job-id")
    s.add_argument("--wait", action="store_true", help="wait and print the results")
    jobs = sub.add_parser("jobs", help="list jobs, newest first (Temporal visibility)")
    jobs.add_argument("--status", choices=["running", "completed", "failed", "cancelled",
                                           "terminated", "continued_as_new", "timed_out"])
    jobs.add_argument("--limit", type=int, default=100)
    st = sub.add_parser("status", help="show a job's progress")
    st.add_argument("job_id")
    st.add_argument("--watch", action="store_true")
    sub.add_parser("demo", help="run the demo job (starts the embedded stack if needed)")
    gc = sub.add_parser("gc", help="sweep checkpoint data left by terminated jobs and "
                                     "the stored items of finished jobs")
    gc.add_argument("--grace", type=float, default=3600.0,
                    help="keep unreferenced blobs younger than this many seconds (default 3600)")
    gc.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                    help="also delete the final checkpoints kept (keep='final') for more than "
                         "DAYS days (0: all of them)")
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"])
    codec = sub.add_parser("codec-server",
                           help="run a Temporal remote codec server (payload previews for the UI)")
    codec.add_argument("--port", type=int, default=8081)
    codec.add_argument("--host", default="127.0.0.1")
    codec.add_argument("--cors-origin", action="append", metavar="URL",
                       help="a Temporal UI origin allowed to call it (repeatable; default "
                            "http://localhost:8233 and http://127.0.0.1:8233)")
    api = sub.add_parser("api", help="run the REST API")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; 0.0.0.0 behind a load balancer)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {"state_dir": args.state_dir} if getattr(args, "state_dir", None) else {}
        if getattr(args, "max_tasks", None) is not None:
            overrides["max_concurrent_tasks"] = args.max_tasks
        settings = load_settings(**overrides)
        return _dispatch(args, settings)
    except (SettingsError, ValueError, ConnectionError, RuntimeError, FileNotFoundError,
            CheckpointError) as exc:
        print(f"crowdcompute: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (SettingsError, ValueError)) else 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    if cmd == "worker":
        from worker_app.worker import exit_now, serve

        _log_to_stderr()
        # Not asyncio.run: it would join the threads of cancelled task functions.
        asyncio.new_event_loop().run_until_complete(serve(settings))
        exit_now(0)  # never returns
    if cmd == "dev":
        return _dev(args, settings)
    if cmd == "demo":
        from worker_app.demo import run_demo

        return run_demo(settings)
    if cmd == "submit":
        return asyncio.run(_submit(args, settings))
    if cmd == "jobs":
        return asyncio.run(_jobs(settings, args.status, args.limit))
    if cmd == "status":
        from worker_app.status_view import show_status

        return asyncio.run(show_status(settings, args.job_id, watch=args.watch))
    if cmd == "gc":
        if args.older_than is not None and args.older_than < 0:
            raise ValueError("--older-than must be >= 0 days")
        return asyncio.run(_gc(settings, args.grace, args.older_than))
    if cmd == "db":
        import checkpoint

        assert settings.database_url is not None  # Settings fills it in
        checkpoint.upgrade_database(settings.database_url)
        print(f"database at {settings.database_url} is up to date")
        return 0
    if cmd == "api":
        from worker_app.api import serve as serve_api

        serve_api(settings, args.port, host=args.host)
        return 0
    if cmd == "codec-server":
        from worker_app.codec_server import serve as serve_codec

        serve_codec(settings, args.port, host=args.host, origins=args.cors_origin)
        return 0
    raise AssertionError(cmd)


def _log_to_stderr() -> None:
    """Warnings from everything; checkpoint activity (spec log prefixes) at INFO."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("checkpoint", "crowdcompute", "activities", "worker_app"):
        logging.getLogger(name).setLevel(logging.INFO)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from worker_app.dev import DevStack, DevStackError, port_in_use

    stack = DevStack(settings, port=args.port, ui_port=args.ui_port, codec_port=args.codec_port)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        ports = ((args.port, "Temporal gRPC", "--port"), (args.ui_port, "Temporal UI", "--ui-port"),
                 (args.api_port, "REST API", "--api-port"),
                 (args.codec_port, "codec server", "--codec-port"))
        taken = [(p, what, flag) for p, what, flag in ports if port_in_use(p)]
        if taken:
            raise DevStackError(
                "already in use: " + ", ".join(f"port {p} ({what})" for p, what, _ in taken)
                + ". Is another `crowdcompute dev` running? Stop what runs there or choose "
                + " / ".join(flag for _, _, flag in taken) + ".")
        stack.start_server()
        for _ in range(args.workers):
            stack.start_worker()
        stack.start_api(args.api_port)
        stack.start_codec_server()
        print(f"Temporal:     {stack.address} (namespace {settings.namespace})")
        print(f"Temporal UI:  http://localhost:{args.ui_port} (decodes payloads with the codec "
              f"server: it was started with --ui-codec-endpoint {stack.codec_endpoint})")
        print(f"codec server: {stack.codec_endpoint}; for the CLI: temporal workflow show "
              f"--workflow-id JOB_ID --codec-endpoint {stack.codec_endpoint}")
        print(f"REST API:     http://localhost:{args.api_port}/api/checkpoints/jobs/JOB_ID "
              f"(docs: http://localhost:{args.api_port}/docs)")
        print(f"workers:      {len(stack.workers)} on task queue {settings.task_queue!r}")
        print(f"state dir:    {settings.state_dir}")
        print("Ctrl-C stops everything.", flush=True)
        while stack.server_running():
            stack.supervise_once()  # workers and the API that exit are restarted
            time.sleep(0.5)
        print("crowdcompute: the Temporal dev server exited (see "
              f"{settings.state_dir / 'temporal.log'}); stopping. Its state is in temporal.db: "
              "`crowdcompute dev` again resumes the jobs", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping…", flush=True)
        return 0
    finally:
        stack.stop()


async def _gc(settings: Settings, grace: float, older_than_days: float | None = None) -> int:
    from sdk._job_items import build_job_item_store
    from sdk._temporal import connect_client
    from worker_app.gc import collect
    from worker_app.worker import open_manager

    manager = open_manager(settings)
    report = await collect(manager, await connect_client(settings), grace,
                           build_job_item_store(settings), older_than_days)
    if older_than_days is not None:
        print(f"deleted {len(report.kept_deleted)} kept final checkpoint(s) older than "
              f"{older_than_days:g} day(s)"
              + (f" ({', '.join(report.kept_deleted)})" if report.kept_deleted else ""))
    print(f"checked {report.jobs_checked} job(s) with checkpoint data; deleted "
          f"{len(report.jobs_deleted)} that are not running"
          + (f" ({', '.join(report.jobs_deleted)})" if report.jobs_deleted else "")
          + f"; removed {report.orphans_removed} orphaned blob(s) and unfinished write(s)")
    print(f"job item store: deleted the items of {len(report.items_trimmed)} finished job(s)"
          + (f" ({', '.join(report.items_trimmed)})" if report.items_trimmed else "")
          + f" and everything of {len(report.items_deleted)} job(s) Temporal no longer knows"
          + (f" ({', '.join(report.items_deleted)})" if report.items_deleted else ""))
    return 0


async def _submit(args: argparse.Namespace, settings: Settings) -> int:
    import sdk

    items = json.loads(args.items.read_text())
    if not isinstance(items, list):
        raise ValueError(f"{args.items} must contain a JSON list of items")
    await sdk.connect(settings=settings)
    job = await sdk.submit(
        args.function, items, checkpoint_interval=args.checkpoint_interval, job_id=args.job_id
    )
    print(job.job_id, flush=True)
    if args.wait:
        results = await job.result()
        print(json.dumps(results, default=_jsonable, indent=2))
    return 0


async def _jobs(settings: Settings, status: str | None, limit: int) -> int:
    import sdk

    await sdk.connect(settings=settings)
    found = await sdk.list_jobs(status=status, limit=limit)
    print(f"{'JOB ID':<40} {'STATUS':<16} {'STARTED':<20} CLOSED")
    for job in found:
        started = job.started_at.strftime("%Y-%m-%d %H:%M:%S") if job.started_at else "-"
        closed = job.closed_at.strftime("%Y-%m-%d %H:%M:%S") if job.closed_at else "-"
        print(f"{job.job_id:<40} {job.status:<16} {started:<20} {closed}")
    if not found:
        print("(no jobs)" if status is None else f"(no {status} jobs)")
    return 0


def _jsonable(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else repr(obj)


def run() -> None:
    """Console entry point: ``main()``, then exit without interpreter finalization.

    The Temporal client's native threads can still be alive when the interpreter
    finalizes, which occasionally aborts the process ("PyGILState_Release") after
    the command already succeeded; everything is flushed and the exit is immediate.
    """
    code = main()
    from worker_app.worker import exit_now

    exit_now(code)


if __name__ == "__main__":
    run()
