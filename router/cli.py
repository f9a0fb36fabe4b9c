"""The ``router`` command: run Triton, the gateway, or both; validate and explain configs.

router up        Triton with the project's models + the gateway (the README's command)
router triton    Triton only (from the nvidia-pytriton wheel, or --tritonserver PATH)
router serve     the gateway only, for an existing Triton (TRITON_URL)
router validate  check a routes file: every issue as file:line:col path: message
router explain   which route and models a request would get
router cache     stats or purge the result cache of a running gateway
router pregen    fill the cache from a list of prompts, on idle capacity
router canary    canary rollouts of a running gateway: status, pause, resume, promote, abort
router jobs      async jobs of a running gateway: counts, drain, resume, list, show, cancel
router budgets   spend budgets of a running gateway: list, show, credit
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import IO

from router import __version__, cli_admin
from router.errors import CacheStoreError, ConfigError, RouterError, StateStoreError, TritonStartupError
from router.triton import TritonConfig, TritonServer

__all__ = ["main"]

EXIT_CONFIG = 2


def _default_repository() -> Path:
    local = Path("model_repository")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "model_repository"


def _triton_args(p: argparse.ArgumentParser, default_http: int) -> None:
    p.add_argument("--model-repository", type=Path, default=None, help="default: ./model_repository")
    p.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    p.add_argument("--triton-host", default="127.0.0.1", help="address Triton binds (default: loopback)")
    p.add_argument("--triton-http-port", type=int, default=default_http, help="0 picks a free port")
    p.add_argument("--triton-grpc-port", type=int, default=0)
    p.add_argument("--triton-metrics-port", type=int, default=0)
    p.add_argument("--tritonserver", type=Path, default=None, help="another tritonserver binary to run")
    p.add_argument("--backend-directory", type=Path, default=None, help="with --tritonserver: its backends")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--routes", type=Path, default=Path("routes.yaml"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--no-watch", action="store_true", help="reload only on SIGHUP or POST /admin/reload")
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true", help="no JSON line per request on stdout")
    p.add_argument(
        "--access-log-flush",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="write buffered access log lines this often (0: every line at once; default 1)",
    )
    p.add_argument("--no-metrics", action="store_true", help="no Prometheus metrics (/metrics is 404)")
    p.add_argument(
        "--grpc-port", type=int, default=8081, help="KServe v2 gRPC and gRPC health (default 8081; 0 picks one)"
    )
    p.add_argument("--no-grpc", action="store_true", help="HTTP only")
    p.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS", ""),
        metavar="IPS",
        help="proxies whose X-Forwarded-For/-Proto are believed (comma-separated, '*' for any; default: none)",
    )
    p.add_argument(
        "--max-head-bytes",
        type=int,
        default=64 << 10,
        metavar="BYTES",
        help="a request line and headers over this are a 431 and the connection closed (default 65536)",
    )
    p.add_argument(
        "--head-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request head not complete this long after its first byte is a 408 and closed (default 10)",
    )
    p.add_argument(
        "--grpc-max-rpcs",
        type=int,
        default=2048,
        metavar="N",
        help="gRPC calls and streams handled at once; more get RESOURCE_EXHAUSTED at once (default 2048)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Triton and the gateway together")
    _serve_args(up)
    _triton_args(up, default_http=0)
    up.add_argument(
        "--triton-log",
        type=Path,
        default=Path("triton.log"),
        help="where Triton's own log goes (default: ./triton.log; '-' for the terminal)",
    )
    triton = sub.add_parser("triton", help="start Triton with the model repository")
    _triton_args(triton, default_http=8000)
    serve = sub.add_parser("serve", help="run the gateway")
    _serve_args(serve)
    validate = sub.add_parser("validate", help="validate a routes file")
    validate.add_argument("file", type=Path)
    explain = sub.add_parser("explain", help="explain how a request would be routed")
    explain.add_argument("file", type=Path)
    explain.add_argument("--prompt", required=True)
    explain.add_argument("--intent")
    explain.add_argument("--model")
    explain.add_argument("--header", action="append", default=[], metavar="K=V")
    cli_admin.add_parsers(sub)
    return parser


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


def _start_triton(args: argparse.Namespace) -> TritonServer:
    server = _triton_server(args)
    try:
        _start(server)
    except BaseException:
        server.stop()
        raise
    return server


def _start(server: TritonServer, log_path: Path | None = None) -> None:
    where = f" (its log: {log_path})" if log_path is not None else ""
    print(f"starting Triton with {server.config.model_repository} ...{where}", file=sys.stderr, flush=True)
    server.start()
    try:
        server.wait_ready()
    except TritonStartupError:
        if log_path is not None:  # the reason is in the log the terminal did not see
            lines = log_path.read_text(errors="replace").splitlines()[-30:]
            print("\n".join(["--- the end of Triton's log ---", *lines]), file=sys.stderr, flush=True)
        raise
    cfg = server.config
    print(
        f"Triton ready: HTTP {server.http_url}  gRPC {cfg.host}:{cfg.grpc_port}  "
        f"metrics http://{cfg.host}:{cfg.metrics_port}/metrics",
        flush=True,
    )


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def cmd_triton(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so a SIGTERM during startup still stops Triton
    server = _start_triton(args)

    def forward(signum: int, frame: FrameType | None) -> None:
        server.terminate()

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = server.wait()
    server.stop()
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else int(code)


def _run_gateway(args: argparse.Namespace) -> None:
    import uvicorn

    from router.app import create_app
    from router.rpc import GrpcOptions
    from router.serving import GracefulServer, bounded_protocol

    grpc = None
    if not args.no_grpc:
        grpc = GrpcOptions(host=args.host, port=args.grpc_port, max_concurrent_rpcs=args.grpc_max_rpcs)
    app = create_app(
        args.routes,
        watch=not args.no_watch,
        access_log=not args.no_access_log,
        access_log_flush_s=args.access_log_flush,
        metrics=not args.no_metrics,
        grpc=grpc,
    )
    grpc_note = "" if grpc is None else f", gRPC on {args.host}:{args.grpc_port or '(a free port)'}"
    print(f"gateway listening on http://{args.host}:{args.port}{grpc_note}  (routes: {args.routes})", flush=True)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        loop="auto",
        http=bounded_protocol(args.max_head_bytes, args.head_timeout),
        timeout_graceful_shutdown=10,
        proxy_headers=bool(args.forwarded_allow_ips),  # none named: X-Forwarded-* is never believed
        forwarded_allow_ips=args.forwarded_allow_ips or None,
    )
    access = app.state.runtime.access_log  # held lines written the moment a stop signal comes
    server = GracefulServer(config, on_exit=access.flush if access is not None else lambda: None)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C (re-raised after shutdown) ends it
        server.run()
    if not server.started:  # as uvicorn.run: a server that never started (a port in use) exits 3
        raise SystemExit(3)


def cmd_serve(args: argparse.Namespace) -> int:
    _run_gateway(args)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from router.config import load_file

    load_file(args.routes)  # fail fast on a bad file, before starting Triton
    signal.signal(signal.SIGTERM, _exit_on_signal)  # uvicorn installs its own once serving
    # Triton's startup table and the models' logs go to a file, not over the gateway's
    # own output; `--triton-log -` keeps them on the terminal.
    log_path = None if str(args.triton_log) == "-" else args.triton_log
    log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - closed below
    server = _triton_server(args, log)
    try:
        _start(server, log_path)
        os.environ["TRITON_URL"] = server.http_url
        os.environ["TRITON_GRPC_URL"] = f"{server.config.host}:{server.config.grpc_port}"
        _run_gateway(args)
    finally:
        server.stop()
        if log is not None:
            log.close()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from router.config import load_file

    table = load_file(args.file)
    print(
        f"{args.file}: OK  digest {table.digest}  {len(table.routes)} routes, "
        f"{len(table.models)} models, {len(table.backends)} backends, default route {table.default.name!r}"
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from router.ask import Ask
    from router.backends.base import ImageRequest
    from router.config import load_file
    from router.decide import explain, hint_forecast
    from router.policy.match import RequestFacts

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


COMMANDS = {
    "up": cmd_up,
    "triton": cmd_triton,
    "serve": cmd_serve,
    "validate": cmd_validate,
    "explain": cmd_explain,
    "cache": cli_admin.cmd_cache,
    "pregen": cli_admin.cmd_pregen,
    "canary": cli_admin.cmd_canary,
    "jobs": cli_admin.cmd_jobs,
    "budgets": cli_admin.cmd_budgets,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: no such file", file=sys.stderr)
        return EXIT_CONFIG
    except (CacheStoreError, StateStoreError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except RouterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
