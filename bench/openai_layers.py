"""Where the OpenAI Images path's CPU goes, layer by layer, with the app called in process.

The gateway's ASGI app is called straight (no HTTP server), ``--clients`` requests at
once, against the stand-in upstream of ``bench/openai_peers.py`` in its own process.
Each case replaces one layer with a stored answer of its own (the first real one), so
the layers below it do no work:

- ``none``: the whole path;
- ``backend``: the hosted call (``OpenAIImagesBackend._generate``: the upstream exchange
  and reading its answer);
- ``gateway``: all of ``Gateway.serve`` (decide, admit, walk), leaving the edge: the
  body parsed, the answer made, metrics and the access log;
- ``floor``: ``bench/asgi_floor.py``'s bare relay instead of the gateway, the same HTTP
  client and upstream.

CPU is this process's only (``time.process_time``), per request. Cases alternate over
``--rounds``, each in a fresh process.

    .venv/bin/python bench/openai_layers.py --rounds 2 --requests 6400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openai_peers import GATEWAY_ROUTES, start_upstream, stop  # noqa: E402

CASES = ["none", "backend", "gateway", "floor"]
BODY = b'{"model":"img-1","prompt":"a lighthouse at dusk","n":1,"size":"1024x1024","response_format":"b64_json"}'
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@contextlib.asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    """The app's startup and shutdown, as a server would run them."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def stored(cls: Any, name: str) -> None:
    """``cls.name`` answers with its first real answer from then on (after one loop turn)."""
    real = getattr(cls, name)
    kept: dict[str, Any] = {}

    async def answer(self: Any, *args: Any) -> Any:
        if "answer" not in kept:
            kept["answer"] = await real(self, *args)
        await asyncio.sleep(0)
        return kept["answer"]

    setattr(cls, name, answer)


async def measure(case: str, requests: int, clients: int, tmp: Path, upstream: str) -> float:
    if case == "floor":
        import asgi_floor

        os.environ["UPSTREAM"] = upstream.split("//")[1].split("/")[0]
        app: App = asgi_floor.app
        running: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
    else:
        from image_router.app import create_app

        routes = tmp / "routes.yaml"
        routes.write_text(GATEWAY_ROUTES)
        made = create_app(routes, watch=True, access_log=True, access_log_flush_s=1.0, metrics=True, grpc=None)
        app, running = made, lifespan(made)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 9), "client": ("127.0.0.1", 5), "scheme": "http", "method": "POST",
        "root_path": "", "path": "/v1/images/generations", "raw_path": b"/v1/images/generations",
        "query_string": b"", "headers": headers,
    }  # fmt: skip

    async def one() -> None:
        read, done, status = [False], asyncio.Event(), []

        async def receive() -> dict[str, Any]:
            if not read[0]:
                read[0] = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope, state={}), receive, send)
        done.set()
        assert status == [200], status

    async with running:
        for _ in range(500):  # warm
            await one()
        if case in ("backend", "gateway"):
            from image_router.backends.openai import OpenAIImagesBackend

            stored(OpenAIImagesBackend, "_generate")
        if case == "gateway":
            from image_router.gateway import Gateway

            stored(Gateway, "serve")
        for _ in range(200):
            await one()

        async def client() -> None:
            for _ in range(requests // clients):
                await one()

        started = time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        return (time.process_time() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        import uvloop

        with tempfile.TemporaryDirectory() as directory:
            tmp = Path(directory)
            os.environ.update({"HOSTED_URL": args.upstream, "HOSTED_KEY": "sk-test", "ROUTER_STATE_DIR": str(tmp)})
            os.chdir(tmp)
            seconds = uvloop.run(measure(args.case, args.requests, args.clients, tmp, args.upstream))
        print(f"{seconds * 1e6:.1f}")
        return
    with tempfile.TemporaryDirectory() as directory:
        upstream = start_upstream(Path(directory))
        try:
            results: dict[str, list[str]] = {case: [] for case in CASES}
            for _ in range(args.rounds):
                for case in CASES:
                    cmd = [sys.executable, __file__, "--case", case, "--upstream", upstream.url]
                    cmd += ["--requests", str(args.requests), "--clients", str(args.clients)]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    results[case].append(done.stdout.strip().splitlines()[-1])
        finally:
            for process in upstream.stop:
                stop(process)
    print(f"| layer replaced by a stored answer | CPU per request at {args.clients} clients, per round |")
    print("|---|---|")
    for case, rounds in results.items():
        print(f"| {case} | {', '.join(f'{r} µs' for r in rounds)} |")


if __name__ == "__main__":
    main()
