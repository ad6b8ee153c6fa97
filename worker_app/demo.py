"""``crowdcompute demo``: a real training-style job on the embedded stack."""

from __future__ import annotations

import asyncio
import time

from worker_app.dev import DevStack, port_in_use, split_address
from worker_app.settings import Settings

DEMO_ITEMS = list(range(6))


def run_demo(settings: Settings) -> int:
    """Start what is missing, run the demo job, print results, stop what it started."""
    host, port = split_address(settings.temporal_address)
    stack = DevStack(settings, port=port, ui_port=port + 1000)
    try:
        if port_in_use(port, "127.0.0.1" if host == "localhost" else host):
            print(f"using the Temporal server at {settings.temporal_address}")
        else:
            print(f"starting Temporal at {stack.address} (UI http://localhost:{stack.ui_port}) …")
            stack.start_server()
        stack.start_worker()  # harmless next to existing workers; needed when none run
        return asyncio.run(_run(settings))
    finally:
        stack.stop()


async def _run(settings: Settings) -> int:
    import sdk
    from worker_app.demo_tasks import train

    await sdk.connect(settings=settings)
    print(f"training {len(DEMO_ITEMS)} linear models as one durable job …", flush=True)
    start = time.monotonic()
    results = await sdk.map(train, DEMO_ITEMS, checkpoint_interval=1.0, job_id=f"demo-{int(time.time())}")
    print(f"done in {time.monotonic() - start:.1f}s")
    for r in results:
        print(f"  model {r['seed']}: loss {r['loss']:.6f}, max weight error {r['weight_error']:.4f}")
    return 0
