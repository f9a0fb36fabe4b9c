"""``router --help`` and completion: every option explained, no markup, every variable named.

The parser is built and printed in-process (no server starts); the completion script is
checked by bash itself.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shutil
import subprocess

import pytest

from image_router.cli import main
from image_router.cli_parser import ENVIRONMENT, build_parser
from tests.procs import ROOT

# The admin commands' ``action`` positionals come from image_router/cli_admin.py, which has
# no help on them yet (its owner was asked for it): they are the only exceptions.
VARIABLE = r"(ROUTER|OTEL|TRITON|FORWARDED)_[A-Z_]+"
POSITIONALS_WITHOUT_HELP: set[tuple[str, str]] = set()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def help_text(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*args, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


COMMANDS = sorted(subcommands(build_parser()))


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for name, parser in subcommands(build_parser()).items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip() and (name, action.dest) not in POSITIONALS_WITHOUT_HELP:
                missing.append(f"router {name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"no help: {missing}"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_is_plain_text_with_examples(command: str) -> None:
    """No RST from a docstring (``router``, :mod:), and an epilog of examples."""
    text = help_text(*([command] if command else []))
    assert "``" not in text and not re.search(r":(mod|class|func):`", text)
    assert "examples:\n  router" in text or "examples:\n  source <(router" in text or "examples:\n  TRITON" in text


def test_top_level_help_lists_every_command() -> None:
    text = help_text()
    for name in COMMANDS:
        assert re.search(rf"^    {name}\b", text, re.M), name


def test_serve_help_shows_defaults_and_the_environment() -> None:
    text = help_text("serve")
    assert re.search(r"--port PORT\s+the HTTP port \(0: a free one, named at start\)\s+\(default: 8080\)", text)
    assert "(default: ./routes.yaml, else the one the package ships)" in " ".join(text.split())
    assert "(default: text)" in text
    environment = text.split("environment:")[1]
    for name in ("ROUTER_ADMIN_TOKEN", "TRITON_URL", "TRITON_GRPC_URL", "OTEL_TRACES_EXPORTER", "ROUTER_STATE_DIR"):
        assert re.search(rf"^  {name}\s+\S", environment, re.M), name
    assert "--no-grpc             HTTP only\n" in text  # a flag's default (False) is not said


def test_admin_commands_name_their_token() -> None:
    for command in ("cache", "pregen", "canary", "jobs", "budgets"):
        assert "ROUTER_ADMIN_TOKEN  the gateway's admin token" in help_text(command)
    assert "(default: http://127.0.0.1:8080)" in " ".join(help_text("jobs").split())  # argparse wraps


def test_every_variable_the_package_reads_is_explained() -> None:
    """A variable named anywhere in image_router/ must be in the help's table."""
    named = set()
    for path in (ROOT / "image_router").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            value = getattr(node, "value", None)
            if isinstance(node, ast.Constant) and isinstance(value, str) and re.fullmatch(VARIABLE, value):
                named.add(value)
    explained = {key.split()[0] for key in ENVIRONMENT}
    assert len(named) > 5, "the walk found no variable: is the package where it looks?"
    assert named - explained == set()
    assert {"ROUTER_ADMIN_TOKEN", "TRITON_URL", "ROUTER_LOG_FORMAT"} <= named


def test_log_format_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["serve"]).log_format == "text"
    monkeypatch.setenv("ROUTER_LOG_FORMAT", "json")
    assert build_parser().parse_args(["up"]).log_format == "json"
    monkeypatch.setenv("ROUTER_LOG_FORMAT", "yaml")  # not a format: the default, not an error
    assert build_parser().parse_args(["serve"]).log_format == "text"


def completion(shell: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["completion", shell]) == 0
    return out.getvalue()


def test_bash_completion_knows_the_commands_and_their_options() -> None:
    script = completion("bash")
    line = re.search(r"^_shtab_router_subparsers=\((.*)\)$", script, re.M)
    assert line is not None and set(line.group(1).split()) == set(COMMANDS)
    assert "--log-format" in script and "--routes" in script
    bash = shutil.which("bash")
    if bash is not None:  # bash itself loads it and registers the command
        run = subprocess.run([bash, "-c", f"{script}\ncomplete -p router"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "router" in run.stdout


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_other_shells_get_a_script(shell: str) -> None:
    script = completion(shell)
    assert "serve" in script and "validate" in script
