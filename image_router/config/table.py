"""The compiled, immutable routing table the data plane reads.

A table is built once per successful load and never mutated, so a reload swaps one
reference and a request keeps the table it started with until it finishes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from pydantic import SecretStr

from image_router.billing.spec import Billing, Budget, Price
from image_router.config.regex import Pattern

__all__ = [
    "Analysis",
    "Arm",
    "Backend",
    "CacheConfig",
    "HeaderRule",
    "JobTier",
    "JobsConfig",
    "Matcher",
    "Model",
    "Rollout",
    "Route",
    "RouteCache",
    "RouteHints",
    "RouteLimits",
    "RoutingTable",
    "Shadow",
    "StateConfig",
    "Tenant",
]


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """When to stop sending (see :mod:`image_router.policy.circuit`)."""

    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    min_requests: int = 20
    window_s: float = 10.0
    cooldown_s: float = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 2
    backoff_s: float = 0.01
    max_backoff_s: float = 0.2
    budget_ratio: float = 0.2
    budget_window_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    kind: str  # "triton" | "openai"
    url: str
    api_key: SecretStr | None = None
    connect_timeout_s: float = 2.0
    max_connections: int = 256
    replicas: tuple[str, ...] = ()
    protocol: str = "http"  # Triton inference: "http" | "grpc"
    grpc_targets: tuple[str, ...] = ()  # host:port per replica, aligned with urls
    grpc_port: int = 8001  # with discover: each discovered address's gRPC port
    discover: bool = False  # replicas: every address the urls' hosts resolve to, kept current
    discover_interval_s: float = 5.0
    health_interval_s: float = 1.0
    health_timeout_s: float = 0.5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)
    accepts: frozenset[str] = frozenset()  # a hosted API: the optional fields it takes ("seed", "steps")

    @property
    def urls(self) -> tuple[str, ...]:
        return self.replicas or (self.url,)


@dataclass(frozen=True, slots=True)
class Model:
    """A logical model; ``remote_name`` is the model's name at its backend."""

    name: str
    backend: str
    remote_name: str
    version: str | None
    latency_hint_ms: float
    max_concurrency: int | None = None
    max_queue: int = 0
    instances: int = 1  # requests one replica executes at once (Triton's instance_group count)
    native_side: int | None = None  # the side it is made for (None: unknown): upscaled past it
    price: Price | None = None  # what one image costs (None: unpriced; refused when billing exists)
    default_steps: int | None = None  # steps when a request names none (None: steps are not forecast)
    over_http: bool = False  # inference over HTTP even on a gRPC backend (a tier too fast to cancel)

    @property
    def lane_key(self) -> str:
        """What one queue at the backend serves: logical aliases of it share the queue."""
        return f"{self.remote_name}@{self.version or ''}"


@dataclass(frozen=True, slots=True)
class HeaderRule:
    name: str  # lower-case
    equals: str | None = None
    regex: Pattern | None = None


@dataclass(frozen=True, slots=True)
class Matcher:
    """Conditions that must all hold; ``None`` means "any"."""

    prompt: Pattern | None = None
    intents: frozenset[str] | None = None
    headers: tuple[HeaderRule, ...] = ()
    models: frozenset[str] | None = None
    qualities: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Analysis:
    min_samples: int = 50
    confidence: float = 0.95
    max_error_rate_increase: float = 0.01
    max_p95_ratio: float = 1.5
    max_downgrade_rate_increase: float = 0.05
    max_degenerate_rate_increase: float = 0.02


@dataclass(frozen=True, slots=True)
class Shadow:
    fraction: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class Rollout:
    """A canary arm's progressive rollout (see :mod:`image_router.rollouts`). ``digest`` is
    of its spec: editing the rollout in routes.yaml restarts it."""

    steps: tuple[float, ...]
    intervals_s: tuple[float, ...]  # one per step
    analysis: Analysis
    digest: str
    shadow: Shadow | None = None
    on_failure: str = "rollback"  # | "pause"
    on_success: str = "promote"  # | "hold"
    webhook: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Arm:
    model: str
    weight: float
    canary: bool = False
    rollout: Rollout | None = None


@dataclass(frozen=True, slots=True)
class RouteLimits:
    max_n: int = 4
    max_steps: int | None = None
    max_side: int | None = None


@dataclass(frozen=True, slots=True)
class RouteHints:
    """A route's opt-in to adapt to a constrained network (image_router/policy/hints.py):
    cap the longest side at ``max_side`` (``None``: never), start the chain at its first
    fallback (``downgrade``)."""

    max_side: int | None = None
    downgrade: bool = False


@dataclass(frozen=True, slots=True)
class RouteCache:
    ttl_s: float
    seedless: str  # "share" | "fresh"
    upgrade: bool = False
    scope: str | None = None  # "tenant" | "shared" | None: by the tenants' mode (tenant in keys mode)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The result store (one per table; a reload that changes it swaps the store)."""

    store: str = "disk://.router-cache"
    max_bytes: int = 1 << 30
    max_entry_bytes: int = 16 << 20
    ttl_s: float = 7 * 24 * 3600
    timeout_s: float = 0.02
    public_url: str | None = None
    image_max_age_s: int = 365 * 24 * 3600
    memory_bytes: int = 64 << 20
    background_share: float = 0.01


DEFAULT_STATE_FILE = ".router-state/state.db"  # beside the cache's .router-cache; $ROUTER_STATE_DIR moves it


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The state store (one per table; a reload that changes it swaps the store).

    ``store`` is ``sqlite://PATH`` or ``redis://...``; ``assume_noeviction`` lets a
    Redis without ``CONFIG`` (a managed one) be used on the operator's word."""

    store: str = f"sqlite://{DEFAULT_STATE_FILE}"
    timeout_s: float = 0.05
    assume_noeviction: bool = False


@dataclass(frozen=True, slots=True)
class JobTier:
    max_running: int = 1
    min_share: float = 0.1
    batch_rows: int = 1  # rows of queued jobs computed together (image_router/jobs/batch.py)


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """Async jobs (:mod:`image_router.jobs`); present only with a ``jobs:`` block."""

    default_deadline_s: float = 3600
    max_deadline_s: float = 86400
    retention_s: float = 86400
    max_queued: int = 10000
    max_n: int = 50
    max_queued_per_tenant: int = 100
    max_running_per_tenant: int = 2
    tenant_max_running: Mapping[str, int] = field(default_factory=dict)  # tenants.*.jobs.max_running
    max_attempts: int = 3
    lease_s: float = 30
    poll_after_ms: int = 1000
    idempotency_ttl_s: float = 86400
    urgency_margin_s: float = 30
    tier_defaults: JobTier = field(default_factory=JobTier)
    tiers: Mapping[str, JobTier] = field(default_factory=dict)
    webhook_secrets: tuple[str, ...] = ()
    webhook_allow_cidrs: tuple[str, ...] = ()
    tenant_webhook_secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    webhook_schedule_s: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    webhook_timeout_s: float = 15

    def secrets(self, tenant: str) -> tuple[str, ...]:
        """The secrets that sign a tenant's webhooks (the first signs; all during rotation)."""
        return self.tenant_webhook_secrets.get(tenant) or self.webhook_secrets

    def tier(self, model: str) -> JobTier:
        return self.tiers.get(model, self.tier_defaults)

    def running_cap(self, tenant: str) -> int | None:
        """The most of ``tenant``'s jobs that may run at once over all replicas. ``None``
        for the anonymous caller of ``tenants: {mode: open}``: everyone is that one
        tenant, so its cap would be a global one (the tiers' ``max_running`` is that)."""
        if not tenant:
            return None
        return self.tenant_max_running.get(tenant, self.max_running_per_tenant)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    matcher: Matcher
    arms: tuple[Arm, ...]
    budget_ms: float
    fallback: tuple[str, ...] = ()
    sticky: tuple[str, str] | None = None  # ("header", "x-user-id")
    priority: int | None = None
    limits: RouteLimits = field(default_factory=RouteLimits)
    hedge_after_ms: float | None = None
    hedge_p95: bool = False
    cache: RouteCache | None = None
    resize: str = "reject"  # "reject" | "upscale": a size over a tier's native_side
    client_hints: RouteHints | None = None  # None: a constrained network changes nothing here

    @property
    def is_split(self) -> bool:
        return len(self.arms) > 1

    def alone(self, model: str) -> Route:
        """This route served by ``model`` alone: its budget, cache and priority, but no
        other arm, fallback or hedge (a progressive preview, a rollout's shadow)."""
        return replace(self, arms=(Arm(model, 1.0),), fallback=(), hedge_after_ms=None, hedge_p95=False)

    @property
    def rollout_arm(self) -> Arm | None:
        """The canary arm that carries a rollout (at most one per route)."""
        for arm in self.arms:
            if arm.rollout is not None:
                return arm
        return None


def key_digest(key: str) -> str:
    """How a tenant's API key is kept and looked up: never as itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_index(tenants: Iterable[Tenant]) -> dict[str, Tenant]:
    """Each key digest -> its tenant (a key belongs to one tenant: the compiler says so)."""
    return {digest: tenant for tenant in tenants for digest in tenant.key_digests}


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    key_digests: tuple[str, ...]
    requests_per_s: float | None = None
    burst: int = 1
    images_per_day: int | None = None
    max_concurrency: int | None = None
    priority_ceiling: int | None = None  # the highest priority (lowest number) it may ask for
    routes: frozenset[str] | None = None  # routes and models it may use (None: all)
    overrides: frozenset[str] = frozenset()  # lower-case headers it may send to steer routing
    budget: Budget | None = None  # spend limits (image_router/billing/)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    routes: tuple[Route, ...]
    default: Route
    models: Mapping[str, Model]
    backends: Mapping[str, Backend]
    digest: str
    source: str
    cache: CacheConfig | None = None  # None: no route opts in, no store is opened
    state: StateConfig | None = None  # None: no rollout, no shared tenant limit, no state block
    jobs: JobsConfig | None = None  # None: no jobs: block (the job endpoints answer 404)
    model_aliases: Mapping[str, str] = field(default_factory=dict)  # name -> model, route or "auto"
    tenant_mode: str = "open"  # "open" | "keys"
    tenants: tuple[Tenant, ...] = ()
    sources: tuple[str, ...] = ()  # other files it was read from (a tenants file): watched too
    billing: Billing | None = None  # None: nothing is priced, no `usage` is sent
    # made from the above once per table: what each request looks up, by key rather than
    # by a walk through every tenant or route (thousands of tenants cost ~0.15 ms a walk)
    tenant_keys: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    _routes_by_name: Mapping[str, Route] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant_keys", MappingProxyType(key_index(self.tenants)))
        by_name = {self.default.name: self.default}
        by_name.update((route.name, route) for route in reversed(self.routes))  # the first of a name wins
        object.__setattr__(self, "_routes_by_name", MappingProxyType(by_name))

    def route_named(self, name: str) -> Route | None:
        return self._routes_by_name.get(name)

    def aliases(self) -> list[str]:
        """Names a client may put in ``model``: logical models and route names."""
        names = dict.fromkeys([*self.models, *(r.name for r in self.routes), self.default.name, *self.model_aliases])
        return list(names)
