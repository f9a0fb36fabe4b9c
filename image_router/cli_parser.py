"""The ``router`` command line: its options, and what ``--help`` says of them.

Kept apart from :mod:`image_router.cli`, which acts on the options. Every parser of the
command (the admin ones :mod:`image_router.cli_admin` adds included) is a :class:`Parser`,
so every option's help ends with its default where it has one worth saying, and every
command's epilog lists examples and the environment variables it reads — kept here,
beside one table of what each variable does, so that two commands cannot describe one
variable differently. Plain text only: argparse prints it as it is. Options that take
a path say so to shtab, whose completion scripts (``router completion``) then offer
files there.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import shtab

from image_router import __version__, cli_admin, logs

__all__ = ["ENVIRONMENT", "HelpFormatter", "Parser", "build_parser", "epilog"]

DESCRIPTION = "An inference gateway for image generation in front of NVIDIA Triton: run it, check its routes."
LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]

ENVIRONMENT = {
    "ROUTER_ADMIN_TOKEN": "the admin API's bearer token (unset: the admin API and status page are off)",
    "ROUTER_ADMIN_TOKEN (client)": "the gateway's admin token, sent as the bearer token (required)",
    "TRITON_URL": "Triton's HTTP address, as routes.yaml reads it with ${TRITON_URL}",
    "TRITON_GRPC_URL": "Triton's gRPC host:port, as routes.yaml reads it with ${TRITON_GRPC_URL}",
    "ROUTER_CACHE_STORE": "the result cache's store, for routes.yaml's ${ROUTER_CACHE_STORE}",
    "ROUTER_STATE_STORE": "the state store, for routes.yaml's ${ROUTER_STATE_STORE}",
    "ROUTER_CONFIG_ENV": "more variables routes.yaml may read with ${VAR} (comma or space separated)",
    "ROUTER_SECRET_DIRS": "the only directories key_files and tenants.file may lie under",
    "ROUTER_STATE_DIR": "where the default SQLite state file goes (default: ./.router-state)",
    "ROUTER_URL_SECRET": "signs image URLs (default: derived from ROUTER_ADMIN_TOKEN)",
    "ROUTER_LOG_FORMAT": "text or json: the default of --log-format",
    "FORWARDED_ALLOW_IPS": "the default of --forwarded-allow-ips",
    "ROUTER_SERVE_WORKERS": "the default of --workers",
    "ROUTER_WORKERS": "set by --workers for its workers (how many there are): not for operators",
    "PROMETHEUS_MULTIPROC_DIR": "with --workers: where the workers' metrics files go (default: a fresh temp dir)",
    "OTEL_TRACES_EXPORTER": "none (default), console or otlp: OpenTelemetry traces",
    "OTEL_EXPORTER_OTLP_*": "the OTLP endpoint, headers, ... (with OTEL_TRACES_EXPORTER=otlp)",
    "OTEL_SERVICE_NAME": "the traces' service name (default: image-router)",
    "OTEL_TRACES_SAMPLER": "e.g. parentbased_traceidratio, with OTEL_TRACES_SAMPLER_ARG=0.1",
    "OTEL_SDK_DISABLED": "true: no tracing whatever the rest says",
}
ROUTES_ENV = [
    "TRITON_URL",
    "TRITON_GRPC_URL",
    "ROUTER_CACHE_STORE",
    "ROUTER_STATE_STORE",
    "ROUTER_CONFIG_ENV",
    "ROUTER_SECRET_DIRS",
    "ROUTER_STATE_DIR",
]
SERVE_ENV = [
    "ROUTER_ADMIN_TOKEN",
    *ROUTES_ENV,
    "ROUTER_URL_SECRET",
    "ROUTER_LOG_FORMAT",
    "FORWARDED_ALLOW_IPS",
    "ROUTER_SERVE_WORKERS",
    "PROMETHEUS_MULTIPROC_DIR",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_*",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_SDK_DISABLED",
]


def epilog(examples: list[str], env: list[str] | None = None, note: str = "") -> str:
    """A command's epilog: its examples, then what each variable it reads does."""
    lines = ["examples:", *(f"  {example}" for example in examples)]
    if env:  # a key may say whose view it is ("ROUTER_ADMIN_TOKEN (client)"): the name is its first word
        width = max(len(name.split()[0]) for name in env)
        lines += ["", "environment:", *(f"  {name.split()[0]:<{width}}  {ENVIRONMENT[name]}" for name in env)]
    if note:
        lines += ["", note]
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written (one example a line); an option's default appended to its help
    unless it has none worth saying (a flag, ``None``, empty) or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or isinstance(default, bool) or default in ("", [], argparse.SUPPRESS)
        if not action.option_strings or nothing or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser with :class:`HelpFormatter`, for the command and every subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _files(action: argparse.Action, kind: object = shtab.FILE) -> argparse.Action:
    """Completion offers paths here (``shtab.FILE`` or ``shtab.DIRECTORY``)."""
    action.complete = kind  # type: ignore[attr-defined]  # shtab reads this attribute
    return action


def _triton_args(p: argparse.ArgumentParser, default_http: int) -> None:
    g = p.add_argument_group("Triton")
    _files(
        g.add_argument(
            "--model-repository", type=Path, help="the models Triton serves (default: ./model_repository if it exists)"
        ),
        shtab.DIRECTORY,
    )
    g.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    g.add_argument("--triton-host", default="127.0.0.1", help="the address Triton binds")
    g.add_argument("--triton-http-port", type=int, default=default_http, help="Triton's HTTP port (0 picks a free one)")
    g.add_argument("--triton-grpc-port", type=int, default=0, help="Triton's gRPC port (0 picks a free one)")
    g.add_argument("--triton-metrics-port", type=int, default=0, help="Triton's metrics port (0 picks a free one)")
    _files(
        g.add_argument("--tritonserver", type=Path, help="another tritonserver binary to run (default: the wheel's)")
    )
    _files(
        g.add_argument("--backend-directory", type=Path, help="with --tritonserver: its backends (default: its own)"),
        shtab.DIRECTORY,
    )


def _serve_args(p: argparse.ArgumentParser) -> None:
    routes = "the routes file (default: ./routes.yaml, else the one the package ships)"
    _files(p.add_argument("--routes", type=Path, default=None, help=routes))
    p.add_argument("--host", default="127.0.0.1", help="the address HTTP and gRPC bind")
    p.add_argument("--port", type=int, default=8080, help="the HTTP port (0: a free one, named at start)")
    p.add_argument("--no-watch", action="store_true", help="reload only on SIGHUP or POST /admin/reload")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="the server's (uvicorn's) log level")
    p.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default=logs.default_format(),
        help=f"json: one JSON object per log line, with request_id and trace_id (env: {logs.LOG_FORMAT_ENV})",
    )
    p.add_argument("--no-access-log", action="store_true", help="no JSON line per request on stdout")
    p.add_argument(
        "--access-log-flush",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="write buffered access log lines this often (0: every line at once)",
    )
    p.add_argument("--no-metrics", action="store_true", help="no Prometheus metrics (/metrics is 404)")
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("ROUTER_SERVE_WORKERS", "1") or "1"),
        metavar="N",
        help="gateway processes sharing the ports, one core each (env: ROUTER_SERVE_WORKERS; docs/benchmarks.md)",
    )
    p.add_argument("--grpc-port", type=int, default=8081, help="KServe v2 gRPC and gRPC health (0 picks a free port)")
    p.add_argument("--no-grpc", action="store_true", help="HTTP only")
    p.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS", ""),
        metavar="IPS",
        help="proxies whose X-Forwarded-For/-Proto are believed (comma-separated, '*' for any; "
        "env: FORWARDED_ALLOW_IPS; default: none)",
    )
    p.add_argument(
        "--max-head-bytes",
        type=int,
        default=64 << 10,
        metavar="BYTES",
        help="a request line and headers over this are a 431 and the connection closed",
    )
    p.add_argument(
        "--head-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request head not complete this long after its first byte is a 408 and closed",
    )
    p.add_argument(
        "--grpc-max-rpcs",
        type=int,
        default=2048,
        metavar="N",
        help="gRPC calls and streams handled at once; more get RESOURCE_EXHAUSTED at once",
    )


_ADMIN_NOTE = "It talks to a running gateway's admin API (--url), as a script with curl would."
_ADMIN_EPILOGS = {
    "cache": ["router cache stats", "router cache purge --model quality@2", "router cache purge --all"],
    "pregen": ["router pregen prompts.txt", "router pregen - --no-wait < top_prompts.json"],
    "canary": ["router canary status", "router canary pause photo", "router canary promote photo"],
    "jobs": [
        "router jobs counts",
        "router jobs drain --wait --timeout 300",
        "router jobs list --tenant acme",
        "router jobs cancel job_0123",
    ],
    "budgets": ["router budgets list", "router budgets show acme", "router budgets credit acme 25 --window day"],
}


def build_parser() -> argparse.ArgumentParser:
    """The ``router`` command's parser, every subcommand's included."""
    parser = Parser(
        prog="router",
        description=DESCRIPTION,
        epilog=epilog(
            [
                "router up",
                "router serve --routes routes.yaml --port 8080",
                "router validate routes.yaml",
                "router COMMAND --help",
                "source <(router completion bash)",
            ],
            note="Each command's --help lists the environment variables it reads.",
        ),
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    up = sub.add_parser(
        "up",
        help="start Triton and the gateway together",
        description="Start Triton with the model repository, then the gateway in front of it; Ctrl-C stops both.",
        epilog=epilog(
            [
                "router up",
                "router up --routes my-routes.yaml --port 9000 --models draft,preview",
                "router up --log-format json --triton-log -",
            ],
            [*SERVE_ENV],
            "router up sets TRITON_URL and TRITON_GRPC_URL to the Triton it started.",
        ),
    )
    _serve_args(up)
    _triton_args(up, default_http=0)
    _files(
        up.add_argument(
            "--triton-log",
            type=Path,
            default=Path("triton.log"),
            help="where Triton's own log goes ('-': the terminal)",
        )
    )
    triton = sub.add_parser(
        "triton",
        help="start Triton with the model repository",
        description="Start Triton (the nvidia-pytriton wheel's, or --tritonserver) with the model repository.",
        epilog=epilog(["router triton", "router triton --models draft --triton-http-port 8000"]),
    )
    _triton_args(triton, default_http=8000)
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway (HTTP and gRPC) for an existing Triton, routed by the routes file.",
        epilog=epilog(
            [
                "TRITON_URL=http://triton:8000 router serve --host 0.0.0.0",
                "router serve --routes routes.yaml --port 8080 --grpc-port 8081",
                "ROUTER_LOG_FORMAT=json router serve --no-access-log",
            ],
            SERVE_ENV,
        ),
    )
    _serve_args(serve)
    validate = sub.add_parser(
        "validate",
        help="validate a routes file",
        description="Check a routes file as the gateway loads it: every issue as file:line:col path: message (exit 2).",
        epilog=epilog(["router validate routes.yaml"], ROUTES_ENV),
    )
    _files(validate.add_argument("file", type=Path, help="the routes file"))
    explain = sub.add_parser(
        "explain",
        help="explain how a request would be routed",
        description="Print, as JSON, the route, candidate models and fallback chain a request would get.",
        epilog=epilog(
            [
                "router explain routes.yaml --prompt 'a portrait photo' --header X-User-Id=7",
                "router explain routes.yaml --prompt cat --intent draft",
            ],
            ROUTES_ENV,
        ),
    )
    _files(explain.add_argument("file", type=Path, help="the routes file"))
    explain.add_argument("--prompt", required=True, help="the request's prompt")
    explain.add_argument("--intent", help="the request's intent (its intent field or X-Intent)")
    explain.add_argument("--model", help="the model name the client asks for")
    explain.add_argument("--header", action="append", default=[], metavar="K=V", help="a request header (repeatable)")
    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of routes.yaml",
        description="Print the JSON Schema (draft 2020-12) of routes.yaml, for editors that validate and complete "
        "YAML from one (yaml-language-server: '# yaml-language-server: $schema=PATH' atop the file).",
        epilog=epilog(["router schema > routes.schema.json", "router schema --output schema/routes.schema.json"]),
    )
    _files(schema.add_argument("--output", type=Path, help="write it to this file (default: standard output)"))
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for the router command (generated by shtab).",
        epilog=epilog(
            [
                "source <(router completion bash)      # bash, this shell",
                "router completion bash > ~/.local/share/bash-completion/completions/router",
                "router completion zsh > ~/.zfunc/_router   # with fpath+=(~/.zfunc) in ~/.zshrc",
            ],
        ),
    )
    completion.add_argument("shell", choices=shtab.SUPPORTED_SHELLS, help="the shell")
    cli_admin.add_parsers(sub)
    for name, examples in _ADMIN_EPILOGS.items():
        sub.choices[name].epilog = epilog(examples, ["ROUTER_ADMIN_TOKEN (client)"], _ADMIN_NOTE)
    return parser
