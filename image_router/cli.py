"""The ``router`` command: run Triton, the gateway, or both; validate and explain configs.

router up          Triton with the project's models + the gateway (the README's command)
router triton      Triton only (from the nvidia-pytriton wheel, or --tritonserver PATH)
router serve       the gateway only, for an existing Triton (TRITON_URL)
router validate    check a routes file: every issue as file:line:col path: message
router explain     which route and models a request would get
router schema      the JSON Schema of routes.yaml, for editors
router completion  a shell completion script (bash, zsh, tcsh, fish, powershell), made by shtab
router cache       stats or purge the result cache of a running gateway
router pregen      fill the cache from a list of prompts, on idle capacity
router canary      canary rollouts of a running gateway: status, pause, resume, promote, abort
router jobs        async jobs of a running gateway: counts, drain, resume, list, show, cancel
router budgets     spend budgets of a running gateway: list, show, credit

``--help`` on each says its options with their defaults, examples and the environment
variables it reads (:mod:`image_router.cli_parser`). With ``--log-format json`` what ``serve``
and ``up`` say of themselves goes through :mod:`logging` too, so their output is JSON
lines only (:mod:`image_router.logs`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

import shtab

from image_router import cli_admin, logs
from image_router.cli_parser import build_parser
from image_router.errors import CacheStoreError, ConfigError, RouterError, StateStoreError, TritonStartupError
from image_router.triton import TritonConfig, TritonServer

__all__ = ["main"]

EXIT_CONFIG = 2
_log = logging.getLogger("router.cli")  # what serve and up say of themselves, in JSON mode


def _shipped(name: str) -> Path:
    """A file or directory the package ships: in the wheel it lies in the package
    (``image_router/model_repository``, ``image_router/shipped/routes.yaml``, mapped
    there by pyproject.toml), in a checkout at the repository's top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here / "shipped" / name, here.parent / name):
        if candidate.exists():
            return candidate
    return here.parent / name


def _default_repository() -> Path:
    local = Path("model_repository")
    if local.is_dir():
        return local
    return _shipped("model_repository")


def _routes_or_shipped(args: argparse.Namespace) -> None:
    """``up``/``serve`` without ``--routes``: ./routes.yaml, or in a directory with none
    the shipped one (``pip install image-router`` then ``router up`` in an empty
    directory). A ``--routes`` given is used as given: a missing file is an error."""
    if args.routes is None:
        local = Path("routes.yaml")
        args.routes = local if local.exists() else _shipped("routes.yaml")


def _triton_server(args: argparse.Namespace, log: IO[bytes] | None = None) -> TritonServer:
    config = TritonConfig(
        model_repository=args.model_repository or _default_repository(),
        models=[m for m in args.models.split(",") if m],
        host=args.triton_host,
        http_port=args.triton_http_port,
        grpc_port=args.triton_grpc_port,
        metrics_port=args.triton_metrics_port,
        tritonserver=args.tritonserver,
        backend_directory=args.backend_directory,
        model_load_api=False,  # nobody on this machine may load a model into it later
    )
    return TritonServer(config, log)


def _say(args: argparse.Namespace, message: str, *, stderr: bool = False, level: int = logging.INFO) -> None:
    """A line of the command's own: printed, or with ``--log-format json`` a log record,
    so that the output stays JSON lines only."""
    if getattr(args, "log_format", "text") == "json":
        _log.log(level, message)
    else:
        print(message, file=sys.stderr if stderr else sys.stdout, flush=True)


def _start(
    server: TritonServer,
    args: argparse.Namespace,
    log_path: Path | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Start Triton and wait until it is ready; ``on_ready`` runs then, before the line
    that says so (what reads that line may act on it at once)."""
    where = f" (its log: {log_path})" if log_path is not None else ""
    _say(args, f"starting Triton with {server.config.model_repository} ...{where}", stderr=True)
    server.start()
    try:
        server.wait_ready()
    except TritonStartupError:
        if log_path is not None:  # the reason is in the log the terminal did not see
            lines = log_path.read_text(errors="replace").splitlines()[-30:]
            _say(args, "\n".join(["--- the end of Triton's log ---", *lines]), stderr=True, level=logging.ERROR)
        raise
    if on_ready is not None:
        on_ready()
    cfg = server.config
    _say(
        args,
        f"Triton ready: HTTP {server.http_url}  gRPC {cfg.host}:{cfg.grpc_port}  "
        f"metrics http://{cfg.host}:{cfg.metrics_port}/metrics",
    )


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def cmd_triton(args: argparse.Namespace) -> int:
    server = _triton_server(args)
    ready: list[bool] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """Once Triton is ready, a stop signal is passed on to it (it stops gracefully);
        before, it ends the start, which stops Triton. One handler from the start: one
        swapped in after the "ready" line left a moment when a SIGTERM sent on reading
        that line still ended the command with 143 (seen once under make test)."""
        if not ready:
            raise SystemExit(128 + signum)
        server.terminate()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _start(server, args, on_ready=lambda: ready.append(True))
    except BaseException:
        server.stop()
        raise
    code = server.wait()
    server.stop()
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else int(code)


def build_gateway_app(args: argparse.Namespace) -> tuple[Any, Callable[[], None] | None]:
    """The ASGI app ``router serve`` runs for ``args`` (each worker builds its own), and
    what to run the moment a stop signal arrives: write the access log's held lines
    (``None``: no access log)."""
    from image_router.app import create_app
    from image_router.rpc import GrpcOptions

    grpc = None
    if not args.no_grpc:
        grpc = GrpcOptions(
            host=args.host, port=args.grpc_port, max_concurrent_rpcs=args.grpc_max_rpcs, reuse_port=args.workers > 1
        )
    app = create_app(
        args.routes,
        watch=not args.no_watch,
        access_log=not args.no_access_log,
        access_log_flush_s=args.access_log_flush,
        metrics=not args.no_metrics,
        grpc=grpc,
    )
    access = app.state.runtime.access_log
    on_stop = access.flush if access is not None else None
    # JSON lines carry the request id: the outermost layer makes each request's state current
    return (logs.RequestContext(app) if args.log_format == "json" else app), on_stop


def _run_gateway(args: argparse.Namespace) -> None:
    import uvicorn

    from image_router.serving import FlushingConfig, bounded_protocol

    if args.workers > 1 and not args.no_grpc and args.grpc_port == 0:
        from image_router.triton.launcher import free_port

        args.grpc_port = free_port(args.host)  # every worker must bind the same one: chosen here, and said
    grpc_note = "" if args.no_grpc else f", gRPC on {args.host}:{args.grpc_port or '(a free port)'}"
    settings: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "log_config": logs.uvicorn_log_config(args.log_format),
        "access_log": False,
        "loop": "auto",
        "timeout_graceful_shutdown": 10,
        "proxy_headers": bool(args.forwarded_allow_ips),  # none named: X-Forwarded-* is never believed
        "forwarded_allow_ips": args.forwarded_allow_ips or None,
    }
    if args.workers > 1:
        from image_router.workers import run_workers

        def say_workers(port: int) -> None:
            where = f"http://{args.host}:{port}{grpc_note}"
            _say(args, f"gateway: {args.workers} workers on {where}  (routes: {args.routes})")

        run_workers(args, build_gateway_app, on_bound=say_workers, **settings)
        return
    app, on_stop = build_gateway_app(args)
    http = bounded_protocol(args.max_head_bytes, args.head_timeout)
    config = FlushingConfig(app, on_stop, http=http, **settings)
    # `--port 0`: bound here, before it is said, so the line names the port taken and no
    # other process can take it between a pick and the bind (uvicorn exits 3 if it cannot)
    sockets = [config.bind_socket()] if args.port == 0 else None
    port = sockets[0].getsockname()[1] if sockets else args.port
    _say(args, f"gateway listening on http://{args.host}:{port}{grpc_note}  (routes: {args.routes})")
    server = uvicorn.Server(config)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C (re-raised after shutdown) ends it
            server.run(sockets=sockets)
    finally:
        for sock in sockets or ():
            sock.close()
    if not server.started:  # as uvicorn.run: a server that never started (a port in use) exits 3
        raise SystemExit(3)


def cmd_serve(args: argparse.Namespace) -> int:
    _routes_or_shipped(args)
    _run_gateway(args)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from image_router.config import load_file

    _routes_or_shipped(args)
    load_file(args.routes)  # fail fast on a bad file, before starting Triton
    signal.signal(signal.SIGTERM, _exit_on_signal)  # uvicorn installs its own once serving
    # Triton's startup table and the models' logs go to a file, not over the gateway's
    # own output; `--triton-log -` keeps them on the terminal.
    log_path = None if str(args.triton_log) == "-" else args.triton_log
    log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - closed below
    server = _triton_server(args, log)
    try:
        _start(server, args, log_path)
        os.environ["TRITON_URL"] = server.http_url
        os.environ["TRITON_GRPC_URL"] = f"{server.config.host}:{server.config.grpc_port}"
        _run_gateway(args)
    finally:
        server.stop()
        if log is not None:
            log.close()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from image_router.config import load_file

    table = load_file(args.file)
    print(
        f"{args.file}: OK  digest {table.digest}  {len(table.routes)} routes, "
        f"{len(table.models)} models, {len(table.backends)} backends, default route {table.default.name!r}"
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from image_router.ask import Ask
    from image_router.backends.base import ImageRequest
    from image_router.config import load_file
    from image_router.decide import explain, hint_forecast
    from image_router.policy.match import RequestFacts

    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--header {item!r}: expected K=V", file=sys.stderr)
            return EXIT_CONFIG
        headers[key.strip()] = value
    facts = RequestFacts.of(args.prompt, args.intent, args.model, headers)
    table = load_file(args.file)
    ask = Ask.of(facts, ImageRequest((args.prompt,)), None)
    print(json.dumps(explain(table, ask, hint_forecast(table)), indent=2))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from image_router.config.jsonschema import routes_schema_text

    text = routes_schema_text()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0


COMMANDS = {
    "up": cmd_up,
    "triton": cmd_triton,
    "serve": cmd_serve,
    "validate": cmd_validate,
    "explain": cmd_explain,
    "schema": cmd_schema,
    "completion": cmd_completion,
    "cache": cli_admin.cmd_cache,
    "pregen": cli_admin.cmd_pregen,
    "canary": cli_admin.cmd_canary,
    "jobs": cli_admin.cmd_jobs,
    "budgets": cli_admin.cmd_budgets,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(getattr(args, "log_format", "text"))

    def fail(message: str) -> None:
        _say(args, message, stderr=True, level=logging.ERROR)

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for issue in exc.issues:
            fail(str(issue))
        return EXIT_CONFIG
    except FileNotFoundError as exc:
        fail(f"error: {exc.filename}: no such file")
        return EXIT_CONFIG
    except (CacheStoreError, StateStoreError) as exc:
        fail(f"error: {exc.message}")
        return EXIT_CONFIG
    except RouterError as exc:
        fail(f"error: {exc.message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
