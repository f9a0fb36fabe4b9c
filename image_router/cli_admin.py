"""``router cache``, ``router pregen``, ``router canary``, ``router jobs`` and ``router
budgets``: the admin API from a terminal.

They talk to a running gateway (``--url``, default ``http://127.0.0.1:8080``) with
``ROUTER_ADMIN_TOKEN`` as the bearer token, exactly as a script with ``curl`` would:
the gateway stays the one place that knows its store.

``router pregen FILE`` reads prompts — one per line, or JSON lines with ``prompt`` and
optional ``route``, ``intent``, ``seed``, ``steps``, ``width``, ``height``, ``n``, or a
JSON list of such objects (``GET /admin/cache``'s ``top_prompts`` as they are) — queues
them, and follows the queue with a progress bar until it is drained.

``router jobs`` reads the async jobs' counts, drains or resumes the replica it reaches
(``drain --wait`` returns once that replica runs nothing: then it can go down) or, with
``--all``, pauses or resumes every replica's claims; lists, shows or cancels jobs of
any tenant, and sends a job's last webhook event again (``redeliver``).

``router budgets`` lists the spend budgets' windows (spent, held, remaining, when they
reset), shows one tenant's, and credits a tenant (``credit TENANT AMOUNT [--window
day]``: the window's spent lowered, never below zero).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

__all__ = [
    "add_budgets_parser",
    "add_canary_parser",
    "add_jobs_parser",
    "add_parsers",
    "budget_lines",
    "cmd_budgets",
    "cmd_cache",
    "cmd_canary",
    "cmd_jobs",
    "cmd_pregen",
    "jobs_lines",
    "read_prompts",
]


def add_parsers(sub: Any) -> None:
    cache = sub.add_parser("cache", help="the result cache of a running gateway: stats, purge")
    cache.add_argument(
        "action", choices=["stats", "purge"],
        help="stats: the store's numbers; purge: remove entries (--model, --route, --prompt or --all)",
    )  # fmt: skip
    cache.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    cache.add_argument("--model", help="purge: a model (name or name@version)")
    cache.add_argument("--route", help="purge: a route")
    cache.add_argument("--prompt", help="purge: one prompt")
    cache.add_argument("--all", action="store_true", help="purge: everything")
    pregen = sub.add_parser("pregen", help="generate the images for a list of prompts on idle capacity")
    pregen.add_argument("file", type=Path, help="prompts: text lines, JSON lines or a JSON list ('-': stdin)")
    pregen.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    pregen.add_argument("--no-wait", action="store_true", help="queue them and return")
    add_canary_parser(sub)
    add_jobs_parser(sub)
    add_budgets_parser(sub)


def add_budgets_parser(sub: Any) -> None:
    budgets = sub.add_parser("budgets", help="spend budgets of a running gateway: list, show, credit")
    budgets.add_argument(
        "action", choices=["list", "show", "credit"],
        help="list: every tenant's windows; show TENANT; credit TENANT AMOUNT: lower a window's spent",
    )  # fmt: skip
    budgets.add_argument("tenant", nargs="?", help="show, credit: the tenant")
    budgets.add_argument("amount", nargs="?", type=float, help="credit: how much (in the billing currency)")
    budgets.add_argument("--window", help="credit: only this window (day, week, month, 1h…; default: every one)")
    budgets.add_argument("--note", help="credit: why (in the audit line)")
    budgets.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    budgets.add_argument("--json", action="store_true", help="the full JSON")


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser(
        "jobs", help="async jobs of a running gateway: counts, drain, resume (this replica), list, show, cancel"
    )
    jobs.add_argument(
        "action", choices=["counts", "drain", "resume", "list", "show", "cancel", "redeliver"],
        help="counts; drain/resume this replica (--all: every replica); list; show, cancel or redeliver JOB",
    )  # fmt: skip
    jobs.add_argument("job", nargs="?", help="show, cancel, redeliver: the job's id")
    jobs.add_argument("--all", action="store_true", help="drain, resume: every replica (a pause in the state store)")
    jobs.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (drain: the replica to drain)")
    jobs.add_argument("--json", action="store_true", help="counts, drain, resume, list: the full JSON")
    jobs.add_argument("--tenant", help="list: one tenant's jobs, newest first (else the active jobs)")
    jobs.add_argument("--status", help="list: only these states (comma-separated)")
    jobs.add_argument("--limit", type=int, default=50, help="list: at most this many")
    jobs.add_argument("--wait", action="store_true", help="drain: until the replica runs no job")
    jobs.add_argument("--timeout", type=float, default=600.0, help="drain --wait: give up after this (s)")


def add_canary_parser(sub: Any) -> None:
    canary = sub.add_parser(
        "canary", help="canary rollouts of a running gateway: status, pause, resume, promote, abort"
    )
    canary.add_argument(
        "action", choices=["status", "pause", "resume", "promote", "abort"],
        help="status [ROUTE]: every rollout or one; pause, resume, promote or abort ROUTE's rollout",
    )  # fmt: skip
    canary.add_argument("route", nargs="?", help="the route whose canary (status: all when left out)")
    canary.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    canary.add_argument("--json", action="store_true", help="status: the full JSON (decisions, analysis)")


def _rollout_line(r: dict[str, Any]) -> str:
    where = f"step {r['step'] + 1}/{len(r['steps'])}" if r.get("step") is not None and r["step"] >= 0 else "shadow"
    store = "" if r["store"] == "ok" else "  PAUSED: shared store unavailable"
    last = r["decisions"][-1] if r["decisions"] else None
    said = (
        f"  last: {last['action']} by {last['by']}" + (f" ({last['reason']})" if last.get("reason") else "")
        if last
        else ""
    )
    return f"{r['route']}: {r['canary']} at {r['weight']:g}% ({r['status']}, {where}) vs {r['baseline']}{store}{said}"


def cmd_canary(args: argparse.Namespace) -> int:
    with _client(args.url) as client:
        if args.action == "status":
            path = f"/admin/canary/{args.route}" if args.route else "/admin/canary"
            result = _check(client.get(path))
            rollouts = [result] if args.route else result["rollouts"]
            if args.json:
                for r in rollouts:
                    r.pop("gallery", None)
                print(json.dumps(rollouts[0] if args.route else rollouts, indent=2))
            elif not rollouts:
                print("no rollouts in routes.yaml")
            else:
                for r in rollouts:
                    print(_rollout_line(r))
            return 0
        if not args.route:
            raise SystemExit(f"error: router canary {args.action} needs a ROUTE")
        print(_rollout_line(_check(client.post(f"/admin/canary/{args.route}/{args.action}"))))
    return 0


def _client(url: str) -> httpx.Client:
    token = os.environ.get("ROUTER_ADMIN_TOKEN")
    if not token:
        raise SystemExit("error: set ROUTER_ADMIN_TOKEN to the gateway's admin token")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            error = response.json().get("error", {})
            message = error.get("message", response.text) if isinstance(error, dict) else str(error)
        except ValueError:
            message = response.text
        raise SystemExit(f"error: {response.status_code} {message}")
    return response.json()


def cmd_cache(args: argparse.Namespace) -> int:
    with _client(args.url) as client:
        if args.action == "stats":
            print(json.dumps(_check(client.get("/admin/cache")), indent=2))
            return 0
        body = {k: v for k, v in (("model", args.model), ("route", args.route), ("prompt", args.prompt)) if v}
        if args.all:
            body["all"] = True
        result = _check(client.post("/admin/cache/purge", json=body))
        print(f"removed {result['removed']} entries")
    return 0


def jobs_lines(o: dict[str, Any]) -> list[str]:
    """``GET /admin/jobs`` for a terminal."""
    counts, here = o.get("counts", {}), o.get("running_here", {})
    state = "DRAINING (claims no new job)" if o["draining"] else "claiming"
    if o.get("paused"):
        state = "PAUSED on every replica (router jobs resume --all)"
    lines = [f"replica {o['replica']}: {state}"]
    if counts:
        lines.append(
            f"queued {counts['queued']} (oldest {o['oldest_queued_age_s']:.1f} s), in_progress "
            f"{counts['in_progress']}, cancelling {counts['cancelling']}; webhook backlog {o['webhook_backlog']}"
        )
    queued, running = o.get("queued_by_tier", {}), o.get("running_by_tier", {})
    for tier in sorted({*queued, *running, *here}):
        lines.append(
            f"  {tier}: queued {queued.get(tier, 0)}, running {running.get(tier, 0)} ({here.get(tier, 0)} here)"
        )
    ended = ", ".join(f"{k} {v}" for k, v in o.get("finished_here", {}).items() if v)
    lines.append(f"attempts ended here: {ended or 'none'}")
    return lines


def _job_line(j: dict[str, Any]) -> str:
    tenant = f" tenant={j['tenant']}" if j["tenant"] else ""
    return f"{j['id']}  {j['status']:<11} tier={j['tier']}{tenant} attempts={j['attempts']} age={j['age_s']:.1f}s"


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.action in ("show", "cancel", "redeliver") and not args.job:
        raise SystemExit(f"error: router jobs {args.action} needs a JOB id")
    with _client(args.url) as client:
        if args.action == "redeliver":
            sent = _check(client.post(f"/admin/jobs/{args.job}/redeliver"))["delivery"]
            print(f"{args.job}: {sent['type']} queued again as {sent['id']}")
            return 0
        if args.action in ("show", "cancel"):
            path = f"/admin/jobs/{args.job}" + ("/cancel" if args.action == "cancel" else "")
            result = _check(client.post(path) if args.action == "cancel" else client.get(path))
            print(json.dumps(result, indent=2) if args.action == "show" else f"{result['id']}: {result['status']}")
            return 0
        if args.action == "list":
            query = {k: v for k, v in (("tenant", args.tenant), ("status", args.status)) if v}
            listed = _check(client.get("/admin/jobs/list", params={**query, "limit": args.limit}))["data"]
            print(json.dumps(listed, indent=2) if args.json else "\n".join(map(_job_line, listed)) or "no jobs")
            return 0
        path = "/admin/jobs" if args.action == "counts" else f"/admin/jobs/{args.action}"
        scope = {"scope": "cluster"} if args.all else {}
        overview = _check(client.get(path) if args.action == "counts" else client.post(path, params=scope))
        print(json.dumps(overview, indent=2) if args.json else "\n".join(jobs_lines(overview)))
        if args.action == "drain" and args.wait:
            return _wait_drained(client, overview, args.timeout)
    return 0


def _wait_drained(client: httpx.Client, overview: dict[str, Any], timeout_s: float) -> int:
    """Until the replica reached runs no job (1 after ``timeout_s``)."""
    replica, deadline = overview["replica"], time.monotonic() + timeout_s
    while sum(overview["running_here"].values()):
        if time.monotonic() > deadline:
            print(f"error: {replica} still runs {sum(overview['running_here'].values())} jobs", file=sys.stderr)
            return 1
        time.sleep(0.5)
        overview = _check(client.get("/admin/jobs"))
        if overview["replica"] != replica:
            raise SystemExit(f"error: --url reached another replica ({overview['replica']}): address the pod itself")
    print(f"{replica} runs no job: drained")
    return 0


def budget_lines(view: dict[str, Any], currency: str) -> list[str]:
    """One tenant of ``GET /admin/budgets`` for a terminal: a line per window."""
    lines = []
    for w in view["windows"]:
        resets = dt.datetime.fromtimestamp(w["resets_at"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(
            f"{view['tenant']}  {w['per']:<6} spent {w['spent']:.6f} + held {w['reserved']:.6f} of "
            f"{w['limit']:.6f} {currency} ({100 * w['used']:.0f}%, {w['state']})  "
            f"{w['remaining']:.6f} left, resets {resets}"
        )
    return lines


def cmd_budgets(args: argparse.Namespace) -> int:
    if args.action in ("show", "credit") and not args.tenant:
        raise SystemExit(f"error: router budgets {args.action} needs a TENANT")
    if args.action == "credit" and args.amount is None:
        raise SystemExit("error: router budgets credit needs an AMOUNT")
    with _client(args.url) as client:
        if args.action == "list":
            result = _check(client.get("/admin/budgets"))
            views = result["tenants"]
        elif args.action == "show":
            result = _check(client.get(f"/admin/budgets/{args.tenant}"))
            views = [result]
        else:
            body = {"amount": args.amount, "window": args.window, "note": args.note}
            result = _check(client.post(f"/admin/budgets/{args.tenant}/credit", json=body))
            views = [result]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for c in result.get("credited", []):
        after = c["spent_before"] - c["credited"]
        print(f"credited {args.tenant} {c['credited']:.6f} {result['currency']} on {c['per']} "
              f"(spent {c['spent_before']:.6f} -> {after:.6f})")  # fmt: skip
    lines = [line for view in views for line in budget_lines(view, result["currency"])]
    print("\n".join(lines) or "no tenant has a budget")
    return 0


def read_prompts(text: str) -> list[dict[str, Any]]:
    stripped = text.strip()
    if stripped.startswith("["):
        items = json.loads(stripped)
        return [i if isinstance(i, dict) else {"prompt": str(i)} for i in items]
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(json.loads(line) if line.startswith("{") else {"prompt": line})
    return out


def cmd_pregen(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
    items = read_prompts(text)
    if not items:
        raise SystemExit("error: no prompts in the file")
    with _client(args.url) as client:
        queued = _check(client.post("/admin/pregenerate", json={"items": items}))
        skipped = {k: v for k, v in queued.items() if k in ("duplicate", "not_cached", "fresh") and v}
        # one job per arm of the matched route: a split route queues more jobs than prompts
        print(
            f"queued {queued['queued']} jobs for {len(items)} prompts" + (f" (skipped: {skipped})" if skipped else "")
        )
        if args.no_wait or not queued["queued"]:
            return 0
        start = _check(client.get("/admin/pregenerate"))["pregen"]
        finished_before = start["done"] + start["cached"] + start["failed"]
        with tqdm(total=queued["queued"], unit="image", file=sys.stderr) as bar:
            while True:
                state = _check(client.get("/admin/pregenerate"))
                p = state["pregen"]
                finished = p["done"] + p["cached"] + p["failed"] - finished_before
                bar.n = min(finished, queued["queued"])
                bar.set_postfix(made=p["done"], cached=p["cached"], failed=p["failed"])
                bar.refresh()
                if finished >= queued["queued"] or (not state["pending"] and state["running"] is None):
                    break
                time.sleep(0.5)
    return 0
