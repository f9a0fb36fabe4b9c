"""Validate a ``routes.yaml`` completely and compile it into a :class:`RoutingTable`.

Every problem is collected — schema errors from pydantic and the cross-references
checked here (unknown models, bad regexes, empty splits, duplicate names) — and
reported together as ``file:line:col path: message``. Validation goes item by item
(each backend, model and route on its own), so a schema error in one route does not
hide a bad regex or an unknown model in another. Nothing is returned unless the
whole file is valid, so a bad edit can never half-replace a running table.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from image_router.config import billing as billing_config
from image_router.config.regex import Pattern, RegexError, compile_regex
from image_router.config.schema import (
    BudgetSpec,
    CacheSpec,
    MatchSpec,
    OpenAIBackendSpec,
    RouteSpec,
    SplitArmSpec,
    StateSpec,
    TenantsSpec,
    TritonBackendSpec,
)
from image_router.config.source import Located, PathKey, read_yaml
from image_router.config.sources import Sources, gather, resolve
from image_router.config.table import (
    DEFAULT_STATE_FILE,
    Analysis,
    Arm,
    Backend,
    CacheConfig,
    CircuitPolicy,
    HeaderRule,
    JobsConfig,
    JobTier,
    Matcher,
    Model,
    RetryPolicy,
    Rollout,
    Route,
    RouteCache,
    RouteHints,
    RouteLimits,
    RoutingTable,
    Shadow,
    StateConfig,
    Tenant,
    key_digest,
)
from image_router.config.validate import Validated, schema_issues, validate
from image_router.errors import ConfigError, ConfigIssue

__all__ = ["DEFAULT_TRITON_URL", "compile_sources", "compile_text"]

DEFAULT_TRITON_URL = "http://127.0.0.1:8000"


def _as_set(value: str | list[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


class _Compiler:
    def __init__(
        self,
        src: Located,
        validated: Validated,
        env: Mapping[str, str],
        tenants_src: Located | None = None,
        sources: Sources | None = None,
    ) -> None:
        self.src = src
        self.sources = sources or Sources(src.file, "")
        self.tenants_src = tenants_src
        self.spec = validated.spec
        self.validated = validated
        self.env = env
        self.issues: list[ConfigIssue] = []
        self.backends: dict[str, Backend] = {}
        self.models: dict[str, Model] = {}

    def fail(self, path: PathKey, message: str) -> None:
        if path[:1] == ("tenants",) and self.tenants_src is not None:  # at the tenants file's line
            self.issues.append(self.tenants_src.issue(path[1:], message))
            return
        self.issues.append(self.src.issue(path, message))

    def regex(self, pattern: str, path: PathKey) -> Pattern | None:
        try:
            return compile_regex(pattern)
        except RegexError as exc:
            self.fail(path, f"invalid regex {pattern!r} (RE2 syntax: no backreferences or lookaround): {exc}")
            return None

    # -- backends and models -------------------------------------------------------

    def compile_backends(self) -> None:
        specs = self.spec.backends
        if specs is None:
            url = self.env.get("TRITON_URL", DEFAULT_TRITON_URL)
            specs = {"triton": TritonBackendSpec(url=url)}
        for name, b in specs.items():
            if isinstance(b, TritonBackendSpec):
                self.compile_triton(name, b)
            elif isinstance(b, OpenAIBackendSpec):
                self.backends[name] = Backend(
                    name,
                    "openai",
                    b.base_url.rstrip("/"),
                    b.api_key,
                    b.connect_timeout_ms / 1000,
                    accepts=frozenset(b.accepts),
                )

    def compile_triton(self, name: str, b: TritonBackendSpec) -> None:
        if (b.url is None) == (b.urls is None):
            self.fail(("backends", name), "give exactly one of url, urls")
            return
        urls = tuple(u.rstrip("/") for u in (b.urls or [b.url or ""]))
        if len(set(urls)) != len(urls):
            self.fail(("backends", name, "urls"), "replica URLs must be distinct")
        if b.grpc_urls is not None and len(b.grpc_urls) != len(urls):
            self.fail(("backends", name, "grpc_urls"), f"give one host:port per replica URL ({len(urls)})")
        if b.discover and b.grpc_urls is not None:
            self.fail(("backends", name, "grpc_urls"), "with discover, give grpc_port: addresses are discovered")
        grpc_targets = tuple(b.grpc_urls or (f"{urlsplit(u).hostname}:{b.grpc_port}" for u in urls))
        r, c = b.retry, b.circuit
        self.backends[name] = Backend(
            name,
            "triton",
            urls[0],
            max_connections=b.max_connections,
            replicas=urls,
            protocol=b.protocol,
            grpc_targets=grpc_targets,
            grpc_port=b.grpc_port,
            discover=b.discover == "dns",
            discover_interval_s=b.discover_interval_ms / 1000,
            health_interval_s=b.health_interval_ms / 1000,
            health_timeout_s=b.health_timeout_ms / 1000,
            retry=RetryPolicy(
                r.attempts, r.backoff_ms / 1000, r.max_backoff_ms / 1000, r.budget_ratio, r.budget_window_s
            ),
            circuit=CircuitPolicy(
                c.consecutive_failures, c.failure_ratio, c.min_requests, c.window_s, c.cooldown_ms / 1000
            ),
        )

    def compile_models(self) -> None:
        for name, m in self.spec.models.items():
            path: PathKey = ("models", name)
            backend = self.backends.get(m.backend)
            if backend is None:
                if m.backend not in self.validated.invalid_backends:  # else reported already
                    self.fail(path + ("backend",), f"unknown backend {m.backend!r}")
                self.validated.invalid_models.add(name)
                continue
            remote = m.triton_model if backend.kind == "triton" else m.remote_model
            for where, message in billing_config.price_issues(m.price, backend.kind):
                self.fail(path + where, message)
            if m.protocol is not None and (backend.kind != "triton" or backend.protocol != "grpc"):
                self.fail(path + ("protocol",), "only for a model of a Triton backend with protocol: grpc")
            self.models[name] = Model(
                name,
                m.backend,
                remote or name,
                m.version,
                m.latency_hint_ms,
                m.max_concurrency,
                m.max_queue,
                m.instances,
                m.native_side,
                billing_config.price(m.price),
                m.default_steps,
                over_http=m.protocol == "http",
            )

    def model_ref(self, name: str, path: PathKey) -> bool:
        """Check a reference; a name not declared becomes a model on the only Triton backend."""
        if name in self.models:
            return True
        if name in self.validated.invalid_models:
            return False  # its own problem is reported where it is declared
        tritons = [b for b in self.backends.values() if b.kind == "triton"]
        if not self.validated.declared_models and len(tritons) == 1:
            self.models[name] = Model(name, tritons[0].name, name, None, 1000.0)
            return True
        self.fail(path, f"unknown model {name!r}")
        return False

    # -- routes ---------------------------------------------------------------------

    def matcher(self, match: str | MatchSpec | None, path: PathKey) -> Matcher:
        if match is None:
            return Matcher()
        if isinstance(match, str):
            kind, sep, value = match.partition(":")
            if not sep:
                return Matcher(intents=frozenset([match]))
            if kind == "prompt":
                return Matcher(prompt=self.regex(value, path))
            if kind == "intent":
                return Matcher(intents=frozenset([value]))
            if kind == "model":
                return Matcher(models=frozenset([value]))
            self.fail(path, f"unknown match kind {kind!r} (use prompt:, intent:, model: or a bare intent)")
            return Matcher()
        headers = []
        for key, rule in (match.headers or {}).items():
            hpath = path + ("headers", key)
            if isinstance(rule, str):
                if rule.startswith("regex:"):
                    headers.append(HeaderRule(key.lower(), None, self.regex(rule[6:], hpath)))
                else:
                    headers.append(HeaderRule(key.lower(), rule, None))
            else:
                if (rule.equals is None) == (rule.regex is None):
                    self.fail(hpath, "give exactly one of equals, regex")
                regex = self.regex(rule.regex, hpath + ("regex",)) if rule.regex else None
                headers.append(HeaderRule(key.lower(), rule.equals, regex))
        return Matcher(
            prompt=self.regex(match.prompt, path + ("prompt",)) if match.prompt else None,
            intents=_as_set(match.intent),
            headers=tuple(headers),
            models=_as_set(match.model),
            qualities=_as_set(match.quality),
        )

    def route(self, spec: RouteSpec, path: PathKey, name: str) -> Route | None:
        ok = True
        if (spec.model is None) == (spec.split is None):
            self.fail(path, "give exactly one of model, split")
            return None
        if spec.split is not None:
            arms = tuple(
                Arm(a.model, a.weight, a.canary, self.rollout(a, path + ("split", i), name))
                for i, a in enumerate(spec.split)
            )
            for i, arm in enumerate(arms):
                ok &= self.model_ref(arm.model, path + ("split", i, "model"))
            if sum(1 for a in arms if a.rollout is not None) > 1:
                self.fail(path + ("split",), "at most one arm may carry a rollout")
            if any(a.rollout for a in arms) and all(a.canary for a in arms):
                self.fail(path + ("split",), "a rollout needs a baseline arm (one without canary: true)")
            if sum(a.weight for a in arms) <= 0:
                self.fail(path + ("split",), "weights must not all be 0")
                ok = False
        else:
            assert spec.model is not None
            arms = (Arm(spec.model, 1.0 if spec.weight is None else spec.weight, spec.canary),)
            ok &= self.model_ref(spec.model, path + ("model",))
        for i, fb in enumerate(spec.fallback):
            ok &= self.model_ref(fb, path + ("fallback", i))
        sticky = None
        if spec.hedge is not None and (spec.hedge.after_ms is None) == (spec.hedge.after is None):
            self.fail((*path, "hedge"), "give exactly one of after_ms, after")
        if spec.hedge is not None and not spec.fallback:
            self.fail((*path, "hedge"), "hedging needs a fallback tier to hedge with")
        if spec.client_hints is not None and spec.client_hints.downgrade and not spec.fallback:
            self.fail((*path, "client_hints", "downgrade"), "a downgrade needs a fallback tier to start at")
        if spec.sticky:
            kind, _, key = spec.sticky.partition(":")
            sticky = (kind, key.lower() if kind == "header" else key)
        matcher = self.matcher(spec.match, path + ("match",))
        if not ok:
            return None
        return Route(
            name=name,
            matcher=matcher,
            arms=arms,
            budget_ms=spec.budget_ms or self.spec.default_budget_ms,
            fallback=tuple(spec.fallback),
            sticky=sticky,
            priority=spec.priority,
            limits=RouteLimits(spec.limits.max_n, spec.limits.max_steps, spec.limits.max_side),
            hedge_after_ms=spec.hedge.after_ms if spec.hedge else None,
            hedge_p95=bool(spec.hedge and spec.hedge.after == "p95"),
            cache=self.route_cache(spec),
            resize=spec.resize,
            client_hints=RouteHints(spec.client_hints.max_side, spec.client_hints.downgrade)
            if spec.client_hints
            else None,
        )

    def rollout(self, arm: SplitArmSpec, path: PathKey, route: str) -> Rollout | None:
        spec = arm.rollout
        if spec is None:
            return None
        path = path + ("rollout",)
        if not arm.canary:
            self.fail(path, "a rollout belongs on the canary arm: add canary: true")
        for i, step in enumerate(spec.steps):
            if not 0 < step <= 100:
                self.fail(path + ("steps", i), "a step is a percentage of traffic: above 0, at most 100")
            elif i and step <= spec.steps[i - 1]:
                self.fail(path + ("steps", i), "steps must increase")
        if spec.steps and spec.steps[0] >= 100 and spec.shadow is None:
            self.fail(path + ("steps", 0), "the first step must be below 100 (or add a shadow stage): "
                      "a canary is judged against a baseline serving beside it")  # fmt: skip
        intervals = spec.interval_s if isinstance(spec.interval_s, list) else [spec.interval_s] * len(spec.steps)
        if len(intervals) != len(spec.steps):
            self.fail(path + ("interval_s",), f"give one interval, or one per step ({len(spec.steps)})")
        for i, interval in enumerate(intervals):
            if interval <= 0:
                self.fail(path + ("interval_s", i), "must be greater than 0")
        analysis = Analysis(**spec.analysis.model_dump())  # the same fields, in the same units
        identity = json.dumps([route, arm.model, spec.model_dump(mode="json")], sort_keys=True)
        return Rollout(
            steps=tuple(spec.steps),
            intervals_s=tuple(intervals),
            analysis=analysis,
            digest=hashlib.sha256(identity.encode()).hexdigest()[:12],
            shadow=Shadow(spec.shadow.fraction, spec.shadow.duration_s) if spec.shadow else None,
            on_failure=spec.on_failure,
            on_success=spec.on_success,
            webhook=spec.webhook,
            webhook_secret=spec.webhook_secret.get_secret_value() if spec.webhook_secret else None,
        )

    def route_cache(self, spec: RouteSpec) -> RouteCache | None:
        if spec.cache is None:
            return None
        store = self.spec.cache or CacheSpec()
        return RouteCache(spec.cache.ttl_s or store.ttl_s, spec.cache.seedless, spec.cache.upgrade, spec.cache.scope)

    def cache_config(self, routes: list[Route]) -> CacheConfig | None:
        """The store, when some route opts in (the embedded default: a disk store)."""
        spec = self.spec.cache
        if spec is None and not any(r.cache for r in routes):
            return None
        spec = spec or CacheSpec()
        if spec.max_entry_bytes > spec.max_bytes:
            self.fail(("cache", "max_entry_bytes"), "must not exceed max_bytes")
        return CacheConfig(
            spec.store,
            spec.max_bytes,
            spec.max_entry_bytes,
            spec.ttl_s,
            spec.timeout_ms / 1000,
            spec.public_url.rstrip("/") if spec.public_url else None,
            spec.image_max_age_s,
            spec.memory_bytes,
            spec.background_share,
        )

    def state_config(self, routes: list[Route], tenants: tuple[Tenant, ...]) -> StateConfig | None:
        """The state store: the ``state:`` block, else — when a rollout or a tenant's
        rate or daily images need one — a SQLite file in ``$ROUTER_STATE_DIR`` (default
        ``.router-state/``, beside the cache's ``.router-cache/``)."""
        spec = self.spec.state
        needed = any(r.rollout_arm for r in routes) or any(t.requests_per_s or t.images_per_day for t in tenants)
        needed = needed or self.spec.jobs is not None  # jobs live in the state store
        needed = needed or any(t.budget is not None for t in tenants)  # spend budgets too
        needed = needed or self.spec.billing is not None  # and the usage ledger
        if spec is None and not needed:
            return None
        spec = spec or StateSpec()
        directory = self.env.get("ROUTER_STATE_DIR")
        default = f"sqlite://{directory.rstrip('/')}/state.db" if directory else f"sqlite://{DEFAULT_STATE_FILE}"
        return StateConfig(spec.store or default, spec.timeout_ms / 1000, spec.assume_noeviction)

    def jobs_config(self) -> JobsConfig | None:
        """The ``jobs:`` block; a tier that is not a model, or a retention shorter than
        the longest deadline, is an error at its line."""
        spec = self.spec.jobs
        limits = {n: t.jobs for n, t in (self.spec.tenants.tenants if self.spec.tenants else {}).items() if t.jobs}
        if spec is None:
            for name in limits:
                self.fail(("tenants", "tenants", name, "jobs"), "a tenant's job limits need a jobs: block")
            return None
        for name in spec.tiers:
            if name not in self.models:
                self.fail(("jobs", "tiers", name), f"{name!r} is not a model")
        if spec.retention_s < spec.max_deadline_s:
            self.fail(("jobs", "retention_s"), "must be >= max_deadline_s (a result must outlive its deadline)")
        for i, secret in enumerate(spec.webhook_secrets):
            if not _whsec(secret.get_secret_value()):
                self.fail(("jobs", "webhook_secrets", i), "must be whsec_ and the base64 of at least 24 bytes")
        for name, listed in spec.tenant_webhook_secrets.items():
            for i, secret in enumerate(listed):
                if not _whsec(secret.get_secret_value()):
                    path: PathKey = ("jobs", "tenant_webhook_secrets", name, i)
                    self.fail(path, "must be whsec_ and the base64 of at least 24 bytes")
        for i, cidr in enumerate(spec.webhook_allow_cidrs):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                self.fail(("jobs", "webhook_allow_cidrs", i), f"{cidr!r} is not a network (10.40.0.0/16)")
        for name, t in {"tier_defaults": spec.tier_defaults, **spec.tiers}.items():
            if t.batch_rows > t.max_running:
                where = ("jobs", "tier_defaults") if name == "tier_defaults" else ("jobs", "tiers", name)
                self.fail((*where, "batch_rows"), f"batch_rows {t.batch_rows} needs max_running >= {t.batch_rows}: "
                          "each job of a pass holds one running place")  # fmt: skip
        tiers = {name: JobTier(t.max_running, t.min_share, t.batch_rows) for name, t in spec.tiers.items()}
        tenant_secrets = {n: tuple(x.get_secret_value() for x in v) for n, v in spec.tenant_webhook_secrets.items()}
        return JobsConfig(
            default_deadline_s=spec.default_deadline_s,
            max_deadline_s=spec.max_deadline_s,
            retention_s=spec.retention_s,
            max_queued=spec.max_queued,
            max_n=spec.max_n,
            max_queued_per_tenant=spec.max_queued_per_tenant,
            max_running_per_tenant=spec.max_running_per_tenant,
            tenant_max_running={name: t.max_running for name, t in limits.items()},
            max_attempts=spec.max_attempts,
            lease_s=spec.lease_s,
            poll_after_ms=spec.poll_after_ms,
            idempotency_ttl_s=spec.idempotency_ttl_s,
            urgency_margin_s=spec.urgency_margin_s,
            tier_defaults=JobTier(
                spec.tier_defaults.max_running, spec.tier_defaults.min_share, spec.tier_defaults.batch_rows
            ),
            tiers=tiers,
            webhook_secrets=tuple(s.get_secret_value() for s in spec.webhook_secrets),
            webhook_allow_cidrs=tuple(spec.webhook_allow_cidrs),
            tenant_webhook_secrets=tenant_secrets,
            webhook_schedule_s=tuple(spec.webhook_schedule_s),
            webhook_timeout_s=spec.webhook_timeout_s,
        )

    def compile_routes(self) -> list[Route]:
        routes: list[Route] = []
        names: dict[str, PathKey] = {}
        raw = self.spec.routes
        i = 0
        while i < len(raw):
            spec, path = raw[i], ("routes", self.validated.route_index[i])
            # Compact form: adjacent routes with the same match and a `weight` are one split.
            j = i + 1
            if spec.weight is not None and spec.model is not None:
                while j < len(raw) and raw[j].weight is not None and raw[j].match == spec.match:
                    j += 1
            if j > i + 1:
                group = raw[i:j]
                arms = [{"model": r.model, "weight": r.weight, "canary": r.canary} for r in group]
                fields = spec.model_dump(exclude={"model", "weight", "canary", "split"}, exclude_none=True)
                spec = RouteSpec.model_validate({**fields, "split": arms})
            name = spec.name or f"route-{self.validated.route_index[i]}"
            if name in names:
                self.fail(path + ("name",), f"duplicate route name {name!r}")
            names[name] = path
            route = self.route(spec, path, name)
            if route is not None:
                routes.append(route)
            i = j
        return routes

    def default(self, routes: list[Route]) -> Route | None:
        spec = self.spec.default_route
        path: PathKey = ("default_route",)
        if spec is None:
            if not self.validated.invalid_default:
                self.fail(path, "required: name a route or a model, or give a route")
            return None
        if isinstance(spec, str):
            for route in routes:
                if route.name == spec:
                    return route
            if self.model_ref(spec, path):
                return Route("default", Matcher(), (Arm(spec, 1.0),), self.spec.default_budget_ms)
            return None
        if spec.match is not None:
            self.fail(path + ("match",), "the default route matches everything; remove match")
        return self.route(spec, path, spec.name or "default")

    def run(self) -> RoutingTable | None:
        self.compile_backends()
        self.compile_models()
        routes = self.compile_routes()
        default = self.default(routes)
        cache = self.cache_config([*routes, *([default] if default else [])])
        aliases = self.aliases(routes)
        mode, tenants = self.tenants([*routes, *([default] if default else [])])
        state = self.state_config([*routes, *([default] if default else [])], tenants)
        jobs = self.jobs_config()
        self.check_priced([*routes, *([default] if default else [])])
        if self.issues or default is None:
            return None
        return RoutingTable(
            routes=tuple(routes),
            default=default,
            models=dict(self.models),
            backends=dict(self.backends),
            digest="",
            source=self.src.file,
            cache=cache,
            model_aliases=aliases,
            tenant_mode=mode,
            tenants=tenants,
            state=state,
            jobs=jobs,
            billing=billing_config.billing(self.spec.billing),
        )

    def check_priced(self, routes: list[Route]) -> None:
        """With ``billing``, a routable model without ``price`` is an error at its
        declaration (or at ``billing`` for a model only a route names)."""
        if self.spec.billing is None:
            tenants = self.spec.tenants
            if tenants is not None and tenants.budget_defaults is not None:
                self.fail(("tenants", "budget_defaults"), "a budget needs a billing block to price images")
            for name, t in (tenants.tenants if tenants else {}).items():
                if t.budget is not None:
                    self.fail(("tenants", "tenants", name, "budget"), "a budget needs a billing block to price images")
            return
        for name in billing_config.routable_models(routes):
            model = self.models.get(name)
            if model is None or model.price is not None:
                continue
            where: PathKey = ("models", name) if name in self.spec.models else ("billing",)
            self.fail(where, f"model {name!r} can be routed to but has no price (billing needs one for every tier)")

    def tenants(self, routes: list[Route]) -> tuple[str, tuple[Tenant, ...]]:
        """The tenants, their keys hashed; a key given twice or a route or model that does
        not exist is an error at its line."""
        spec = self.spec.tenants
        if spec is None:
            return "open", ()
        if spec.mode == "keys" and not spec.tenants:
            self.fail(("tenants", "mode"), "keys mode needs at least one tenant")
        known = {r.name for r in routes} | set(self.models)
        seen: dict[str, str] = {}
        out = []
        for name, t in spec.tenants.items():
            digests = []
            presented: list[tuple[PathKey, str]] = [
                (("tenants", "tenants", name, "keys", i), key.get_secret_value()) for i, key in enumerate(t.keys)
            ]
            for i, path in enumerate(t.key_files):
                content = self.sources.content(resolve(path, Path(self.src.file).parent))
                if isinstance(content, str):
                    self.fail(("tenants", "tenants", name, "key_files", i), content)
                else:
                    presented.append((("tenants", "tenants", name, "key_files", i), content.decode("utf-8", "replace")))
            if not presented:
                self.fail(("tenants", "tenants", name), "give keys or key_files")
            for where, raw in presented:
                value = raw.strip()
                if len(value) < 16:
                    self.fail(where, "a key needs at least 16 characters")
                digest = key_digest(value)
                if digest in seen:
                    self.fail(where, f"the same key as tenant {seen[digest]!r}")
                seen[digest] = name
                digests.append(digest)
            for i, route in enumerate(t.routes or []):
                if route not in known:
                    self.fail(("tenants", "tenants", name, "routes", i), f"unknown route or model {route!r}")
            self.check_downgrade_to(t.budget, ("tenants", "tenants", name, "budget"))
            out.append(
                Tenant(
                    name,
                    tuple(digests),
                    t.requests_per_s,
                    t.burst,
                    t.images_per_day,
                    t.max_concurrency,
                    t.priority_ceiling,
                    frozenset(t.routes) if t.routes is not None else None,
                    frozenset(o.lower() for o in t.overrides),
                    billing_config.budget(billing_config.budget_of(t, spec.budget_defaults)),
                )
            )
        self.check_downgrade_to(spec.budget_defaults, ("tenants", "budget_defaults"))
        return spec.mode, tuple(out)

    def check_downgrade_to(self, budget: BudgetSpec | None, path: PathKey) -> None:
        """Each ``downgrade_to`` name must be a model (checked where it is written)."""
        for i, model in enumerate(budget.downgrade_to if budget is not None else []):
            if model not in self.models and model not in self.validated.invalid_models:
                why = "downgrade_to names models a brownout may serve"
                self.fail(path + ("downgrade_to", i), f"unknown model {model!r} ({why})")

    def aliases(self, routes: list[Route]) -> dict[str, str]:
        """Each alias must stand for ``auto``, a logical model or a route, and must not
        hide one."""
        route_names = {r.name for r in routes} | {"default"}
        for name, target in self.spec.aliases.items():
            path: PathKey = ("aliases", name)
            if name in self.models or name in route_names:
                self.fail(path, f"{name!r} is already a model or route name")
            elif target != "auto" and target not in self.models and target not in route_names:
                self.fail(path, f"unknown target {target!r}: give auto, a model or a route")
        return dict(self.spec.aliases)


def compile_text(text: str, file: str = "routes.yaml", env: Mapping[str, str] | None = None) -> RoutingTable:
    """Validate ``text`` (and read the files it refers to); raise :class:`ConfigError`
    listing every issue."""
    env = os.environ if env is None else env
    return compile_sources(gather(text, file, env), env)


def compile_sources(sources: Sources, env: Mapping[str, str] | None = None) -> RoutingTable:
    """Validate and compile what :func:`image_router.config.sources.gather` read — pure: no
    file is opened here. The table's digest is the sources' digest (every file)."""
    env = os.environ if env is None else env
    text, file = sources.text, sources.file
    src = read_yaml(text, file, env)
    if src.issues and src.data is None:
        raise ConfigError(src.issues)
    if not isinstance(src.data, dict):
        raise ConfigError([src.issue((), "the top level must be a mapping")])
    tenants_src, tenant_issues = _tenants_file(src, src.data, sources, env)
    tenant_issues += [src.issue(("secret_dirs", i), message) for i, message in sources.dir_errors]
    validated = validate(src, src.data)
    compiler = _Compiler(src, validated, env, tenants_src, sources)
    table = compiler.run()
    issues = src.issues + tenant_issues + validated.issues + compiler.issues
    if issues or table is None:
        raise ConfigError(sorted(issues, key=lambda i: (i.file != file, i.line, i.column)))
    return dataclasses.replace(table, digest=sources.digest, sources=sources.paths)


def _tenants_file(
    src: Located, data: dict[str, Any], sources: Sources, env: Mapping[str, str]
) -> tuple[Located | None, list[ConfigIssue]]:
    """``tenants: {file: tenants.yaml}``: the tenants from a file of their own (beside
    routes.yaml unless absolute; reloaded with it), its issues at its own lines."""
    ref = data.get("tenants")
    if not (isinstance(ref, dict) and set(ref) == {"file"} and isinstance(ref["file"], str)):
        return None, []
    path = resolve(ref["file"], Path(src.file).parent)
    content = sources.content(path)
    if isinstance(content, str):
        del data["tenants"]
        return None, [src.issue(("tenants", "file"), content)]
    tenants = read_yaml(content.decode("utf-8", "replace"), str(path), env, src.declared)
    try:
        TenantsSpec.model_validate(tenants.data)
    except ValidationError as exc:
        del data["tenants"]
        return tenants, tenants.issues + schema_issues(tenants, exc)
    data["tenants"] = tenants.data
    return tenants, tenants.issues


def _whsec(secret: str) -> bool:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of at least 24 bytes."""
    if not secret.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    except ValueError:
        return False
