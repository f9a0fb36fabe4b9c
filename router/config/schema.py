"""The user-facing schema of ``routes.yaml`` (pydantic v2; unknown keys are errors).

This is the *authoring* model: it accepts both the full form and the compact form
operators already write (``match: "prompt:<regex>"``, ``match: "<intent>"``, a
``weight`` on a route). :mod:`router.config.compile` normalises it into the immutable
runtime table; nothing at run time reads these classes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag

__all__ = [
    "AnalysisSpec",
    "BackendSpec",
    "BillingSpec",
    "BudgetLimitSpec",
    "BudgetSpec",
    "CacheSpec",
    "CircuitSpec",
    "HeaderMatch",
    "HedgeSpec",
    "JobTierSpec",
    "JobsSpec",
    "LimitsSpec",
    "MatchSpec",
    "ModelSpec",
    "OpenAIBackendSpec",
    "PriceRowSpec",
    "PriceSpec",
    "RetrySpec",
    "RolloutSpec",
    "RouteCacheSpec",
    "RouteSpec",
    "RoutesFile",
    "ShadowSpec",
    "SplitArmSpec",
    "StateSpec",
    "Strict",
    "TokenPriceSpec",
    "TritonBackendSpec",
]

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


URL = Annotated[str, Field(pattern=r"^https?://[^/\s]+")]


class RetrySpec(Strict):
    """Retries of failures that are safe to repeat, on another replica when there is one."""

    attempts: int = Field(default=2, ge=0, le=5, description="retries after the first try")
    backoff_ms: float = Field(default=10, ge=0)
    max_backoff_ms: float = Field(default=200, ge=0)
    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    budget_window_s: float = Field(default=10, gt=0)


class CircuitSpec(Strict):
    consecutive_failures: int = Field(default=5, ge=1)
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    min_requests: int = Field(default=20, ge=1)
    window_s: float = Field(default=10, gt=0)
    cooldown_ms: float = Field(default=5000, gt=0)


class TritonBackendSpec(Strict):
    """A Triton server, or several replicas of one. Inference goes over ``protocol``:
    ``http`` (KServe v2 with binary tensors) or ``grpc``, where abandoning a call (a
    timeout, a hedge's loser, a client gone) cancels it in Triton. Health checks and
    metadata always use the HTTP ``url``; the gRPC endpoint of each replica is its
    host at ``grpc_port``, or the matching entry of ``grpc_urls`` (``host:port``)."""

    type: Literal["triton"] = "triton"
    url: URL | None = None
    urls: list[URL] | None = Field(default=None, min_length=1)
    protocol: Literal["http", "grpc"] = "http"
    grpc_port: int = Field(default=8001, ge=1, le=65535)
    grpc_urls: list[Annotated[str, Field(pattern=r"^[^\s/:]+:\d{1,5}$")]] | None = Field(default=None, min_length=1)
    # `dns`: every address the url's host resolves to is a replica, re-resolved every
    # discover_interval_ms (a Kubernetes headless Service: one replica per ready pod)
    discover: Literal["dns"] | None = None
    discover_interval_ms: float = Field(default=5000, gt=0)
    max_connections: int = Field(default=256, gt=0)
    health_interval_ms: float = Field(default=1000, gt=0)
    health_timeout_ms: float = Field(default=500, gt=0)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    circuit: CircuitSpec = Field(default_factory=CircuitSpec)


class OpenAIBackendSpec(Strict):
    """A hosted, OpenAI-compatible image API (``POST {base_url}/images/generations``)."""

    type: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://[^/\s]+")
    api_key: SecretStr | None = None
    connect_timeout_ms: int = Field(default=2000, gt=0)
    # the request fields the upstream API takes beside prompt, n and size; any other
    # a client sends is refused by name (OpenAI's images API takes neither)
    accepts: list[Literal["seed", "steps"]] = Field(default_factory=list)


def _backend_type(value: Any) -> str:
    """``type`` defaults to ``triton``, so the common case needs only a URL."""
    if isinstance(value, dict):
        return str(value.get("type", "triton"))
    return str(getattr(value, "type", "triton"))


BackendSpec = Annotated[
    Annotated[TritonBackendSpec, Tag("triton")] | Annotated[OpenAIBackendSpec, Tag("openai")],
    Discriminator(_backend_type),
]


class PriceRowSpec(Strict):
    """One entry of a fixed price list (first match wins; a field left out matches all)."""

    per_image: float = Field(ge=0)
    max_side: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    size: str | None = Field(default=None, pattern=r"^[0-9]+x[0-9]+$")
    quality: str | None = Field(default=None, min_length=1)


class TokenPriceSpec(Strict):
    """A hosted tier's price per upstream token (used when its answer reports ``usage``)."""

    input_text: float = Field(default=0.0, ge=0)
    input_image: float = Field(default=0.0, ge=0)
    output_image: float = Field(default=0.0, ge=0)
    output_text: float = Field(default=0.0, ge=0)


class PriceSpec(Strict):
    """What one image costs: ``per_image`` plus compute-seconds at ``per_compute_second``
    (else ``gpus`` x ``billing.gpu_hour_price`` / 3600), or a fixed ``table``; a hosted
    tier's ``tokens`` price instead when its upstream reports token ``usage``."""

    gpus: float = Field(default=1.0, gt=0)
    per_image: float = Field(default=0.0, ge=0)
    per_compute_second: float | None = Field(default=None, ge=0)
    table: list[PriceRowSpec] | None = Field(default=None, min_length=1)
    tokens: TokenPriceSpec | None = None


class ModelSpec(Strict):
    """A logical model: where it runs and what to expect of it."""

    backend: Name
    triton_model: str | None = Field(default=None, min_length=1)
    remote_model: str | None = Field(default=None, min_length=1)
    version: str | None = Field(default=None, pattern=r"^[0-9]+$")
    latency_hint_ms: float = Field(default=1000.0, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    max_queue: int = Field(default=0, ge=0, description="requests that may wait when the model is full")
    instances: int = Field(default=1, gt=0, description="requests one replica runs at once (instance_group count)")
    native_side: int | None = Field(
        default=None, ge=8, description="the side the tier is made for: larger sizes are upscaled on resize: upscale"
    )
    price: PriceSpec | None = None


class HeaderMatch(Strict):
    equals: str | None = None
    regex: str | None = None


class MatchSpec(Strict):
    """All given conditions must hold (AND); an empty match matches everything."""

    prompt: str | None = None
    intent: str | list[str] | None = None
    headers: dict[str, str | HeaderMatch] | None = None
    model: str | list[str] | None = None
    # the quality a client asked for (OpenAI's `quality`: low, medium, high, auto, …)
    quality: str | list[str] | None = None


class AnalysisSpec(Strict):
    """When a canary is worse than its baseline, judged on both arms' answers in the
    current step (every replica's), each with a one-sided test at ``confidence``
    (see :mod:`router.policy.rollout`): nothing is judged below ``min_samples`` per arm."""

    min_samples: int = Field(default=50, ge=5)
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    max_p95_ratio: float = Field(default=1.5, gt=1)
    max_downgrade_rate_increase: float = Field(default=0.05, ge=0, le=1)
    # blank, constant or otherwise degenerate images (a broken checkpoint, a safety filter)
    max_degenerate_rate_increase: float = Field(default=0.02, ge=0, le=1)


class ShadowSpec(Strict):
    """A first stage at weight 0: ``fraction`` of the baseline's seeded requests are
    mirrored to the canary when it has idle capacity; users never see the results."""

    fraction: float = Field(default=0.1, gt=0, le=1)
    duration_s: float = Field(default=600.0, gt=0)


class RolloutSpec(Strict):
    """A canary that moves itself: through ``steps`` (percent of traffic), each held at
    least its interval and until analysis passes; rolled back (or paused) when it fails."""

    steps: list[float] = Field(min_length=1, max_length=20)
    interval_s: float | list[float] = 600.0
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    shadow: ShadowSpec | None = None
    on_failure: Literal["rollback", "pause"] = "rollback"
    on_success: Literal["promote", "hold"] = "promote"
    webhook: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    # signs each POST: X-Router-Signature-256: sha256=HMAC(secret, body), as GitHub does
    webhook_secret: SecretStr | None = None


class SplitArmSpec(Strict):
    model: Name
    weight: float = Field(default=1.0, ge=0)
    canary: bool = False
    rollout: RolloutSpec | None = None


class HedgeSpec(Strict):
    """Also ask the next tier when the first has not answered after ``after_ms`` (or
    its live p95 with ``after: p95``); the first good answer wins."""

    after_ms: float | None = Field(default=None, gt=0)
    after: Literal["p95"] | None = None


class LimitsSpec(Strict):
    """Per-route bounds on what a request may ask for."""

    max_n: int = Field(default=4, ge=1, le=16)
    max_steps: int | None = Field(default=None, ge=1)
    max_side: int | None = Field(default=None, ge=8)


class RouteCacheSpec(Strict):
    """A route's opt-in to the result cache (see :mod:`router.cache`)."""

    ttl_s: float | None = Field(default=None, gt=0, description="defaults to the store's ttl_s")
    seedless: Literal["share", "fresh"] = Field(
        default="share",
        description="share: a request without a seed gets one derived from the prompt, so it can hit; "
        "fresh: a random seed, no lookup, stored under that seed",
    )
    upgrade: bool = Field(default=False, description="after a downgraded answer, make the intended tier's image")
    scope: Literal["tenant", "shared"] | None = Field(
        default=None,
        description="whose entries a request may read, write and join in flight: tenant (its own only; the "
        "default with tenants in keys mode, so no tenant learns what another asked, or when) or shared "
        "(every caller: public assets; the default in open mode)",
    )


class CacheSpec(Strict):
    """Where results are kept: ``disk://PATH`` (one machine; relative to the working
    directory) or ``redis://HOST:PORT/DB`` (shared by gateway replicas)."""

    store: str = Field(default="disk://.router-cache", pattern=r"^(disk://.+|rediss?://.+)$")
    max_bytes: int = Field(default=1 << 30, gt=0, description="disk store size bound (LRU eviction)")
    max_entry_bytes: int = Field(default=16 << 20, gt=0)
    ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    timeout_ms: float = Field(default=20, gt=0, le=1000, description="the most a store call may delay a request")
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    image_max_age_s: int = Field(default=365 * 24 * 3600, ge=0, description="Cache-Control max-age of image URLs")
    memory_bytes: int = Field(default=64 << 20, ge=0, description="recent entries kept in each gateway's memory")
    background_share: float = Field(
        default=0.01, gt=0, le=1, description="the most of a busy tier's time upgrades and pre-generation may take"
    )


class StateSpec(Strict):
    """Where state that must last lives (rollouts, tenants' shared limits): never a cache.

    ``sqlite://PATH`` keeps it in one SQLite file (``sqlite:///abs/path.db``, or relative
    to the working directory), shared by the gateway processes of one machine;
    ``redis://HOST:PORT/DB`` shares it between machines, and must be a Redis that never
    evicts (``maxmemory-policy noeviction``: checked at start and at every reload)."""

    store: str | None = Field(default=None, pattern=r"^(sqlite://.+|rediss?://.+)$")
    timeout_ms: float = Field(default=50, gt=0, le=5000, description="the most a state call may delay a request")
    # a managed Redis that disables CONFIG: the operator vouches for its eviction policy
    assume_noeviction: bool = False


class JobTierSpec(Strict):
    max_running: int = Field(default=1, ge=1, le=1000, description="jobs running on this tier, all replicas")
    min_share: float = Field(default=0.1, ge=0, le=1, description="of a busy tier's time, jobs still get")


class JobsSpec(Strict):
    """Async image jobs (``POST /v1/images/jobs``, docs/jobs.md): kept in ``state:``."""

    default_deadline_s: int = Field(default=3600, ge=10)
    max_deadline_s: int = Field(default=86400, ge=10)
    retention_s: int = Field(default=86400, ge=60, description="a job and its images are kept this long")
    max_queued: int = Field(default=10000, ge=1, description="queued jobs, all tenants")
    max_queued_per_tenant: int = Field(default=100, ge=1)
    max_running_per_tenant: int = Field(
        default=2, ge=1, le=1000, description="a tenant's jobs running at once, all replicas (tenants.*.jobs overrides)"
    )
    max_attempts: int = Field(default=3, ge=1, le=100, description="runs of a job whose gateway was lost")
    lease_s: float = Field(default=30, ge=0.5, le=3600, description="a running job's lease; renewed every third")
    poll_after_ms: int = Field(default=1000, ge=10)
    idempotency_ttl_s: int = Field(default=86400, ge=1)
    urgency_margin_s: float = Field(default=30, ge=0)
    tier_defaults: JobTierSpec = Field(default_factory=JobTierSpec)
    tiers: dict[Name, JobTierSpec] = Field(default_factory=dict)
    webhook_secrets: list[SecretStr] = Field(default_factory=list)  # whsec_...: the first signs, all during rotation
    webhook_allow_cidrs: list[str] = Field(default_factory=list)  # private networks a webhook may reach
    tenant_webhook_secrets: dict[Name, list[SecretStr]] = Field(default_factory=dict)  # per tenant (keys mode)
    webhook_schedule_s: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0],
        min_length=1,
    )  # the delay before each attempt
    webhook_timeout_s: float = Field(default=15, gt=0, le=60)


class BillingSpec(Strict):
    """Prices' common terms (docs/billing.md). With this block every routable model needs a
    ``price``: an unpriced tier would bill 0 without anyone noticing."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    gpu_hour_price: float = Field(default=0.0, ge=0)
    overhead_factor: float = Field(default=1.0, ge=1)
    cache_hit_price: float = Field(default=0.0, ge=0)
    usage_in_response: bool = True
    quote_margin: float = Field(default=1.25, ge=1)


class BudgetLimitSpec(Strict):
    per: str = Field(pattern=r"^(day|week|month|[0-9]+[smhd])$")
    amount: float = Field(gt=0)


class BudgetSpec(Strict):
    """A tenant's spend limits (in ``billing.currency``), reserved before and settled
    after each request in the state store, so every replica shares them."""

    limits: list[BudgetLimitSpec] = Field(min_length=1)
    warn_at: float | None = Field(default=None, gt=0, le=1)
    downgrade_at: float | None = Field(default=None, gt=0, le=1)
    on_exhausted: Literal["reject", "downgrade"] = "reject"
    downgrade_to: list[Name] = Field(default_factory=list)
    fail: Literal["open", "closed"] = "open"


class RouteSpec(Strict):
    name: Name | None = None
    match: str | MatchSpec | None = None
    model: Name | None = None
    weight: float | None = Field(default=None, ge=0)
    canary: bool = False
    split: list[SplitArmSpec] | None = Field(default=None, min_length=1)
    sticky: str | None = Field(default=None, pattern=r"^(header|query|field):[A-Za-z0-9._-]+$")
    budget_ms: float | None = Field(default=None, gt=0)
    fallback: list[Name] = Field(default_factory=list)
    priority: int | None = Field(default=None, ge=1, le=3)
    hedge: HedgeSpec | None = None
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    cache: RouteCacheSpec | None = None
    # a size over a tier's native_side: left to the tier (which refuses what it cannot
    # make: 400, param size), or made at its native size and upscaled (Lanczos)
    resize: Literal["reject", "upscale"] = "reject"


class TenantJobsSpec(Strict):
    """A tenant's own limits on async jobs (needs the top-level ``jobs:`` block)."""

    max_running: int = Field(ge=1, le=1000, description="its jobs running at once over all replicas")


class TenantSpec(Strict):
    """One tenant: its API keys (``${ENV}`` or a mounted Secret file's contents; kept
    only as hashes) and what it may do."""

    keys: list[SecretStr] = Field(default_factory=list)
    # files holding one key each (a mounted Kubernetes Secret), read at every (re)load
    key_files: list[str] = Field(default_factory=list)
    requests_per_s: float | None = Field(default=None, gt=0)
    burst: int = Field(default=1, ge=1)
    images_per_day: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    priority_ceiling: int | None = Field(default=None, ge=1, le=3)
    routes: list[Name] | None = None  # routes and models it may use
    overrides: list[Literal["X-Priority", "X-Canary", "X-Intent"]] = Field(default_factory=list)
    budget: BudgetSpec | None = None
    jobs: TenantJobsSpec | None = None


class TenantsSpec(Strict):
    """``open``: anyone who reaches the port (as before); ``keys``: an API key of a tenant."""

    mode: Literal["open", "keys"] = "open"
    tenants: dict[Name, TenantSpec] = Field(default_factory=dict)
    # the budget of every tenant that does not give its own (``budget: null`` opts out)
    budget_defaults: BudgetSpec | None = None


class RoutesFile(Strict):
    version: Literal[1] = 1
    backends: dict[Name, BackendSpec] | None = None
    models: dict[Name, ModelSpec] = Field(default_factory=dict)
    routes: list[RouteSpec] = Field(default_factory=list)
    default_route: Name | RouteSpec | None = None
    default_budget_ms: float = Field(default=5000.0, gt=0)
    cache: CacheSpec | None = None
    state: StateSpec | None = None
    jobs: JobsSpec | None = None
    billing: BillingSpec | None = None
    # other names for what a client may put in `model` (OpenAI's model names, say):
    # each stands for a logical model, a route, or `auto` (route by the rules)
    aliases: dict[Annotated[str, Field(min_length=1, max_length=128)], Name] = Field(default_factory=dict)
    tenants: TenantsSpec | None = None
    # the environment variables ${VAR} may read (see router/config/source.py) and the
    # directories key_files and tenants.file may be read from (default: routes.yaml's own)
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(default_factory=list)
    secret_dirs: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
