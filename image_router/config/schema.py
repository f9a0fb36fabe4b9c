"""The user-facing schema of ``routes.yaml`` (pydantic v2; unknown keys are errors).

This is the *authoring* model: it accepts both the full form and the compact form
operators already write (``match: "prompt:<regex>"``, ``match: "<intent>"``, a
``weight`` on a route). :mod:`image_router.config.compile` normalises it into the immutable
runtime table; nothing at run time reads these classes.

Every field carries a ``description``: ``router schema`` (:mod:`image_router.config.jsonschema`)
publishes them as the JSON Schema editors show on hover, and a test checks none is
missing — so a new field without one fails the build, not a user's editor.
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
    "ClientHintsSpec",
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

    attempts: int = Field(default=2, ge=0, le=5, description="Retries after the first try.")
    backoff_ms: float = Field(
        default=10, ge=0, description="The first retry's backoff; it doubles per retry, with jitter."
    )
    max_backoff_ms: float = Field(default=200, ge=0, description="The longest backoff between two tries.")
    budget_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Retries are allowed only while they are at most this share of the requests of the last "
        "`budget_window_s` (with a floor of 3), so retries cannot amplify an overload.",
    )
    budget_window_s: float = Field(default=10, gt=0, description="The window the retry budget counts requests over.")


class CircuitSpec(Strict):
    """Circuit breakers per replica and per model on each replica: open for ``cooldown_ms``,
    then one probe decides whether they close again."""

    consecutive_failures: int = Field(default=5, ge=1, description="Failures in a row that open the circuit.")
    failure_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The share of failed outcomes in `window_s` that opens the circuit (over `min_requests`).",
    )
    min_requests: int = Field(
        default=20, ge=1, description="Outcomes in `window_s` before `failure_ratio` is judged at all."
    )
    window_s: float = Field(default=10, gt=0, description="The window `failure_ratio` is computed over.")
    cooldown_ms: float = Field(default=5000, gt=0, description="How long an open circuit stays open before a probe.")


class TritonBackendSpec(Strict):
    """A Triton server, or several replicas of one. Inference goes over ``protocol``:
    ``http`` (KServe v2 with binary tensors) or ``grpc``, where abandoning a call (a
    timeout, a hedge's loser, a client gone) cancels it in Triton. Health checks and
    metadata always use the HTTP ``url``; the gRPC endpoint of each replica is its
    host at ``grpc_port``, or the matching entry of ``grpc_urls`` (``host:port``)."""

    type: Literal["triton"] = Field(default="triton", description="`triton` (the default when left out).")
    url: URL | None = Field(
        default=None, description="Triton's HTTP address, e.g. `${TRITON_URL:-http://127.0.0.1:8000}` (or `urls`)."
    )
    urls: list[URL] | None = Field(
        default=None,
        min_length=1,
        description="The HTTP addresses of several replicas of one Triton (instead of `url`); each request goes "
        "to the replica in service with the fewest in flight.",
    )
    protocol: Literal["http", "grpc"] = Field(
        default="http",
        description="How inference goes to Triton: `http` (KServe v2, binary tensors) or `grpc` (abandoned "
        "work is cancelled in Triton; 0.2-0.5 ms more gateway CPU per request).",
    )
    grpc_port: int = Field(
        default=8001, ge=1, le=65535, description="With `protocol: grpc`: each replica's gRPC port on its host."
    )
    grpc_urls: list[Annotated[str, Field(pattern=r"^[^\s/:]+:\d{1,5}$")]] | None = Field(
        default=None,
        min_length=1,
        description="With `protocol: grpc`: the gRPC `host:port` of each replica, one per HTTP URL, in order "
        "(instead of `grpc_port`).",
    )
    discover: Literal["dns"] | None = Field(
        default=None,
        description="`dns`: every address the url's host resolves to is a replica, re-resolved every "
        "`discover_interval_ms` (a Kubernetes headless Service: one replica per ready pod).",
    )
    discover_interval_ms: float = Field(
        default=5000, gt=0, description="With `discover: dns`: how often the host is resolved again."
    )
    max_connections: int = Field(default=256, gt=0, description="Connections kept open to each replica, at most.")
    health_interval_ms: float = Field(
        default=1000, gt=0, description="How often each replica's readiness (`GET /v2/health/ready`) is checked."
    )
    health_timeout_ms: float = Field(
        default=500, gt=0, description="A readiness check not answered in this time fails (a frozen process)."
    )
    retry: RetrySpec = Field(
        default_factory=RetrySpec, description="Retries of failures that cannot have been processed."
    )
    circuit: CircuitSpec = Field(
        default_factory=CircuitSpec, description="Circuit breakers per replica and per model on each replica."
    )


class OpenAIBackendSpec(Strict):
    """A hosted, OpenAI-compatible image API (``POST {base_url}/images/generations``)."""

    type: Literal["openai"] = Field(description="`openai`: a hosted, OpenAI-compatible image API.")
    base_url: str = Field(
        pattern=r"^https?://[^/\s]+", description="The API's base, e.g. `https://images.example.com/v1`."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The bearer key, usually `${VAR}` (declared under `env:`); never logged or shown.",
    )
    connect_timeout_ms: int = Field(default=2000, gt=0, description="How long connecting to the API may take.")
    accepts: list[Literal["seed", "steps"]] = Field(
        default_factory=list,
        description="The request fields the upstream API takes beside prompt, n and size; any other a client "
        "sends is refused by name (OpenAI's images API takes neither).",
    )


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

    per_image: float = Field(ge=0, description="The price of one image that matches this row.")
    max_side: int | None = Field(default=None, ge=1, description="Matches images whose longer side is at most this.")
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Matches requests of at most this many steps (one that leaves steps to the tier matches).",
    )
    size: str | None = Field(
        default=None, pattern=r"^[0-9]+x[0-9]+$", description="Matches this size asked for, `WIDTHxHEIGHT`."
    )
    quality: str | None = Field(
        default=None, min_length=1, description="Matches this `quality` asked for (OpenAI's low, medium, high, ...)."
    )


class TokenPriceSpec(Strict):
    """A hosted tier's price per upstream token (used when its answer reports ``usage``)."""

    input_text: float = Field(default=0.0, ge=0, description="The price of one input text token.")
    input_image: float = Field(default=0.0, ge=0, description="The price of one input image token.")
    output_image: float = Field(
        default=0.0, ge=0, description="The price of one output image token (output tokens without details count here)."
    )
    output_text: float = Field(default=0.0, ge=0, description="The price of one output text token.")


class PriceSpec(Strict):
    """What one image costs: ``per_image`` plus compute-seconds at ``per_compute_second``
    (else ``gpus`` x ``billing.gpu_hour_price`` / 3600), or a fixed ``table``; a hosted
    tier's ``tokens`` price instead when its upstream reports token ``usage``."""

    gpus: float = Field(
        default=1.0, gt=0, description="GPUs the model occupies: its compute-second rate is a share of the GPU-hour."
    )
    per_image: float = Field(
        default=0.0, ge=0, description="A fixed price per image, beside compute (or when no table row matches)."
    )
    per_compute_second: float | None = Field(
        default=None, ge=0, description="The price of one compute-second (instead of `gpus` x `gpu_hour_price`)."
    )
    table: list[PriceRowSpec] | None = Field(
        default=None, min_length=1, description="A fixed price list instead of metering: the first row that matches."
    )
    tokens: TokenPriceSpec | None = Field(
        default=None, description="A hosted tier's prices per token, used when its upstream reports `usage`."
    )


class ModelSpec(Strict):
    """A logical model: where it runs and what to expect of it."""

    backend: Name = Field(description="The backend (a key under `backends:`) it runs on.")
    triton_model: str | None = Field(
        default=None, min_length=1, description="The model's name in Triton (default: the logical name)."
    )
    remote_model: str | None = Field(
        default=None, min_length=1, description="On a hosted (`type: openai`) backend: the `model` sent upstream."
    )
    version: str | None = Field(
        default=None, pattern=r"^[0-9]+$", description="A Triton model version to pin (default: the one Triton serves)."
    )
    latency_hint_ms: float = Field(
        default=1000.0,
        gt=0,
        description="Seeds the live service-time estimate used for budget decisions until real answers arrive.",
    )
    max_concurrency: int | None = Field(
        default=None,
        gt=0,
        description="Requests in flight on this model, at most; a full tier downgrades or queues (`max_queue`).",
    )
    max_queue: int = Field(default=0, ge=0, description="Requests that may wait when the model is full.")
    instances: int = Field(default=1, gt=0, description="Requests one replica runs at once (its instance_group count).")
    native_side: int | None = Field(
        default=None,
        ge=8,
        description="The side the tier is made for: larger sizes are upscaled on routes with `resize: upscale`.",
    )
    default_steps: int | None = Field(
        default=None,
        ge=1,
        description="The denoising steps the tier runs when a request names none: a request with more is "
        "forecast as that much more work (unset: steps are not counted).",
    )
    price: PriceSpec | None = Field(
        default=None, description="What one image costs (needed for every routable model with a `billing:` block)."
    )
    protocol: Literal["http"] | None = Field(
        default=None,
        description="`http`: this model's inference over HTTP although its backend says `protocol: grpc` - for a "
        "tier so fast that cancelling it saves less than gRPC's client costs (0.3-0.4 ms of gateway CPU a call).",
    )


class HeaderMatch(Strict):
    """A header condition: an exact value, a regex (RE2, searched), or both."""

    equals: str | None = Field(default=None, description="The header's exact value.")
    regex: str | None = Field(default=None, description="A regex (RE2 syntax) searched in the header's value.")


class MatchSpec(Strict):
    """All given conditions must hold (AND); an empty match matches everything."""

    prompt: str | None = Field(
        default=None, description="A regex searched in the prompt (RE2: linear time, no backreferences or lookaround)."
    )
    intent: str | list[str] | None = Field(
        default=None,
        description="The request's intent, or one of a list (the `intent` field, KServe parameter or `X-Intent`).",
    )
    headers: dict[str, str | HeaderMatch] | None = Field(
        default=None,
        description="Header name to an exact value, `regex:<pattern>`, or `{equals: ...}` / `{regex: ...}`.",
    )
    model: str | list[str] | None = Field(
        default=None, description="The model name (alias) the client asked for, or one of a list."
    )
    quality: str | list[str] | None = Field(
        default=None,
        description="The quality a client asked for (OpenAI's `quality`: low, medium, high, auto, ...), or one of a "
        "list.",
    )


class AnalysisSpec(Strict):
    """When a canary is worse than its baseline, judged on both arms' answers in the
    current step (every replica's), each with a one-sided test at ``confidence``
    (see :mod:`image_router.policy.rollout`): nothing is judged below ``min_samples`` per arm."""

    min_samples: int = Field(default=50, ge=5, description="Answers on each arm before anything is judged.")
    confidence: float = Field(default=0.95, ge=0.5, lt=1, description="The confidence of each one-sided test.")
    max_error_rate_increase: float = Field(
        default=0.01, ge=0, le=1, description="The canary's error rate minus the baseline's, at most."
    )
    max_p95_ratio: float = Field(
        default=1.5, gt=1, description="The canary's p95 latency over the baseline's, at most."
    )
    max_downgrade_rate_increase: float = Field(
        default=0.05, ge=0, le=1, description="The canary's downgrade rate minus the baseline's, at most."
    )
    max_degenerate_rate_increase: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="The canary's rate of blank, constant or otherwise degenerate images (a broken checkpoint, a "
        "safety filter) minus the baseline's, at most.",
    )


class ShadowSpec(Strict):
    """A first stage at weight 0: ``fraction`` of the baseline's seeded requests are
    mirrored to the canary when it has idle capacity; users never see the results."""

    fraction: float = Field(
        default=0.1, gt=0, le=1, description="The share of the baseline's seeded requests mirrored to the canary."
    )
    duration_s: float = Field(default=600.0, gt=0, description="How long the shadow stage lasts.")


class RolloutSpec(Strict):
    """A canary that moves itself: through ``steps`` (percent of traffic), each held at
    least its interval and until analysis passes; rolled back (or paused) when it fails."""

    steps: list[float] = Field(
        min_length=1, max_length=20, description="The canary's share of traffic at each step, in percent, increasing."
    )
    interval_s: float | list[float] = Field(
        default=600.0, description="How long each step is held at least: one interval, or one per step."
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="When the canary is judged worse than its baseline."
    )
    shadow: ShadowSpec | None = Field(
        default=None, description="An optional first stage at weight 0 that mirrors requests to the canary."
    )
    on_failure: Literal["rollback", "pause"] = Field(
        default="rollback", description="What a failed analysis does: `rollback` (weight 0) or `pause` (hold)."
    )
    on_success: Literal["promote", "hold"] = Field(
        default="promote", description="After the last step: `promote` the canary, or `hold` at the last step."
    )
    webhook: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$", description="A URL that gets a JSON POST per decision."
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signs each POST: `X-Router-Signature-256: sha256=HMAC(secret, body)`, as GitHub does.",
    )


class SplitArmSpec(Strict):
    """One arm of a weighted split."""

    model: Name = Field(description="The logical model (a key under `models:`) this arm serves.")
    weight: float = Field(default=1.0, ge=0, description="The arm's relative share of the route's traffic.")
    canary: bool = Field(
        default=False, description="This arm is a canary: its answers say so and `X-Canary` can force or avoid it."
    )
    rollout: RolloutSpec | None = Field(
        default=None, description="Move this canary's weight through steps automatically, judged by analysis."
    )


class HedgeSpec(Strict):
    """Also ask the next tier when the first has not answered after ``after_ms`` (or
    its live p95 with ``after: p95``); the first good answer wins."""

    after_ms: float | None = Field(default=None, gt=0, description="Ask the next tier after this long.")
    after: Literal["p95"] | None = Field(
        default=None, description="`p95`: ask the next tier after the first tier's live p95 latency."
    )


class LimitsSpec(Strict):
    """Per-route bounds on what a request may ask for."""

    max_n: int = Field(default=4, ge=1, le=16, description="Images per request, at most.")
    max_steps: int | None = Field(default=None, ge=1, description="Denoising steps a request may ask for, at most.")
    max_side: int | None = Field(default=None, ge=8, description="An image's width and height, at most.")


class RouteCacheSpec(Strict):
    """A route's opt-in to the result cache (see :mod:`image_router.cache`)."""

    ttl_s: float | None = Field(default=None, gt=0, description="How long entries live (default: the store's ttl_s).")
    seedless: Literal["share", "fresh"] = Field(
        default="share",
        description="share: a request without a seed gets one derived from the prompt, so it can hit; "
        "fresh: a random seed, no lookup, stored under that seed.",
    )
    upgrade: bool = Field(default=False, description="After a downgraded answer, make the intended tier's image.")
    scope: Literal["tenant", "shared"] | None = Field(
        default=None,
        description="Whose entries a request may read, write and join in flight: tenant (its own only; the "
        "default with tenants in keys mode, so no tenant learns what another asked, or when) or shared "
        "(every caller: public assets; the default in open mode).",
    )


class CacheSpec(Strict):
    """Where results are kept: ``disk://PATH`` (one machine; relative to the working
    directory) or ``redis://HOST:PORT/DB`` (shared by gateway replicas)."""

    store: str = Field(
        default="disk://.router-cache",
        pattern=r"^(disk://.+|rediss?://.+)$",
        description="`disk://PATH` (one machine) or `redis://HOST:PORT/DB` / `rediss://...` (shared by replicas).",
    )
    max_bytes: int = Field(default=1 << 30, gt=0, description="The disk store's size bound (LRU eviction).")
    max_entry_bytes: int = Field(default=16 << 20, gt=0, description="Larger results are not stored (counted).")
    ttl_s: float = Field(default=7 * 24 * 3600, gt=0, description="How long an entry lives, unless a route says.")
    timeout_ms: float = Field(default=20, gt=0, le=1000, description="The most a store call may delay a request.")
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="The base of image URLs (default: the address the gateway listens on; never the request's Host).",
    )
    image_max_age_s: int = Field(default=365 * 24 * 3600, ge=0, description="Cache-Control max-age of image URLs.")
    memory_bytes: int = Field(default=64 << 20, ge=0, description="Recent entries kept in each gateway's memory.")
    background_share: float = Field(
        default=0.01, gt=0, le=1, description="The most of a busy tier's time upgrades and pre-generation may take."
    )


class StateSpec(Strict):
    """Where state that must last lives (rollouts, tenants' shared limits): never a cache.

    ``sqlite://PATH`` keeps it in one SQLite file (``sqlite:///abs/path.db``, or relative
    to the working directory), shared by the gateway processes of one machine;
    ``redis://HOST:PORT/DB`` shares it between machines, and must be a Redis that never
    evicts (``maxmemory-policy noeviction``: checked at start and at every reload)."""

    store: str | None = Field(
        default=None,
        pattern=r"^(sqlite://.+|rediss?://.+)$",
        description="`sqlite://PATH` (one machine) or `redis://HOST:PORT/DB` (several; must never evict). "
        "Default: a SQLite file in `$ROUTER_STATE_DIR`, when something needs one.",
    )
    timeout_ms: float = Field(default=50, gt=0, le=5000, description="The most a state call may delay a request.")
    assume_noeviction: bool = Field(
        default=False,
        description="A managed Redis that disables CONFIG: the operator vouches for its eviction policy.",
    )


class JobTierSpec(Strict):
    """How much of one tier async jobs may use."""

    max_running: int = Field(default=1, ge=1, le=1000, description="Jobs running on this tier, all replicas.")
    min_share: float = Field(default=0.1, ge=0, le=1, description="The share of a busy tier's time jobs still get.")
    batch_rows: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Rows of queued jobs computed together in one pass (1: each job alone). Opt-in, after "
        "`bench/batching.py` on the tier's hardware: a batched image is within one level of the job alone, "
        "never byte-equal by promise. At most the Triton model's max_batch_size and this tier's max_running.",
    )


class JobsSpec(Strict):
    """Async image jobs (``POST /v1/images/jobs``, docs/jobs.md): kept in ``state:``."""

    default_deadline_s: int = Field(
        default=3600, ge=10, description="A job not finished this long after submission is `expired`."
    )
    max_deadline_s: int = Field(default=86400, ge=10, description="The longest deadline a client may ask for.")
    retention_s: int = Field(default=86400, ge=60, description="A job and its images are kept this long.")
    max_queued: int = Field(default=10000, ge=1, description="Queued jobs, all tenants.")
    max_n: int = Field(
        default=50, ge=1, le=50, description="Images one job may ask for (a route's `limits.max_n`: interactive calls)."
    )
    max_queued_per_tenant: int = Field(default=100, ge=1, description="Queued jobs of one tenant.")
    max_running_per_tenant: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="A tenant's jobs running at once, all replicas (tenants.*.jobs overrides).",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="Runs of a job whose gateway was lost, before it is `failed`."
    )
    lease_s: float = Field(default=30, ge=0.5, le=3600, description="A running job's lease; renewed every third of it.")
    poll_after_ms: int = Field(
        default=1000, ge=10, description="`openai-poll-after-ms` and `Retry-After` on answers of unfinished jobs."
    )
    idempotency_ttl_s: int = Field(
        default=86400, ge=1, description="How long an `Idempotency-Key` keeps naming its job."
    )
    urgency_margin_s: float = Field(
        default=30,
        ge=0,
        description="A queued job is urgent (goes first) when its deadline is within 1.5 x its expected time "
        "plus this.",
    )
    tier_defaults: JobTierSpec = Field(
        default_factory=JobTierSpec, description="Every tier's job limits, unless `tiers` gives its own."
    )
    tiers: dict[Name, JobTierSpec] = Field(default_factory=dict, description="Job limits of particular tiers.")
    webhook_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="`whsec_...` secrets (base64 of at least 24 bytes): the first signs, all during rotation.",
    )
    webhook_allow_cidrs: list[str] = Field(
        default_factory=list, description="Private networks a webhook may reach (e.g. `10.40.0.0/16`)."
    )
    tenant_webhook_secrets: dict[Name, list[SecretStr]] = Field(
        default_factory=dict, description="Per tenant (keys mode): its own `whsec_...` secrets."
    )
    webhook_schedule_s: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0],
        min_length=1,
        description="The delay before each webhook delivery attempt (with 10 % jitter).",
    )
    webhook_timeout_s: float = Field(default=15, gt=0, le=60, description="How long one webhook delivery may take.")


class BillingSpec(Strict):
    """Prices' common terms (docs/billing.md). With this block every routable model needs a
    ``price``: an unpriced tier would bill 0 without anyone noticing."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="The ISO 4217 code prices are in.")
    gpu_hour_price: float = Field(
        default=0.0, ge=0, description="One GPU-hour (align with OpenCost's node_gpu_hourly_cost)."
    )
    overhead_factor: float = Field(
        default=1.0, ge=1, description="Multiplies compute prices: above 1 recovers idle GPU time."
    )
    cache_hit_price: float = Field(default=0.0, ge=0, description="The price of an image served from the store.")
    usage_in_response: bool = Field(
        default=True, description="`usage` in answers, `X-Router-Usage` and KServe's `router_usage`."
    )
    quote_margin: float = Field(default=1.25, ge=1, description="A budget reservation is the quote times this.")


class BudgetLimitSpec(Strict):
    """One spend window of a budget."""

    per: str = Field(
        pattern=r"^(day|week|month|[0-9]+[smhd])$",
        description="`day`, `week` (ISO, from Monday), `month` (UTC), or a duration (`30s`, `90m`, `1h`, `7d`) "
        "aligned to the epoch.",
    )
    amount: float = Field(gt=0, description="What may be spent in one window, in `billing.currency`.")


class BudgetSpec(Strict):
    """A tenant's spend limits (in ``billing.currency``), reserved before and settled
    after each request in the state store, so every replica shares them."""

    limits: list[BudgetLimitSpec] = Field(min_length=1, description="The spend windows; every one must have room.")
    warn_at: float | None = Field(
        default=None, gt=0, le=1, description="From this share of a window, answers say `X-Router-Budget: warn`."
    )
    downgrade_at: float | None = Field(
        default=None, gt=0, le=1, description="From this share of a window (brownout), only the downgrade tiers."
    )
    on_exhausted: Literal["reject", "downgrade"] = Field(
        default="reject", description="A window with no room: `reject` (429) or `downgrade` to what still fits."
    )
    downgrade_to: list[Name] = Field(
        default_factory=list, description="The models a brownout may serve (default: the route's fallback tiers)."
    )
    fail: Literal["open", "closed"] = Field(
        default="open", description="When the state store does not answer: `open` (serve) or `closed` (503)."
    )


class ClientHintsSpec(Strict):
    """What a route may change for a client on a constrained network (`Save-Data: on`,
    `ECT: 2g`/`slow-2g` or `Downlink` under 0.5 Mbps). Format and compression adapt on
    every route without this; docs/client-hints.md has the rules."""

    max_side: int | None = Field(
        default=None,
        ge=8,
        le=4096,
        description="Cap the longest side at this (aspect kept; a request naming no size: the tier's native side).",
    )
    downgrade: bool = Field(default=False, description="Start the chain at its first fallback tier.")


class RouteSpec(Strict):
    """A route: which requests it takes (``match``), which model or split serves them,
    and the budget, fallbacks and limits they are served under. First match wins, in
    file order."""

    name: Name | None = Field(default=None, description="The route's name (in headers, metrics and logs).")
    match: str | MatchSpec | None = Field(
        default=None,
        description="Which requests take this route: conditions that must all hold, or the compact "
        "`prompt:<regex>`, `model:<alias>` or a bare intent. Empty: every request.",
    )
    model: Name | None = Field(default=None, description="The logical model that serves it (or `split`).")
    weight: float | None = Field(
        default=None, ge=0, description="Compact form: adjacent routes with the same match and a weight form a split."
    )
    canary: bool = Field(default=False, description="Compact form: this route's model is a canary arm of the split.")
    split: list[SplitArmSpec] | None = Field(
        default=None, min_length=1, description="Several models by weight (instead of `model`)."
    )
    sticky: str | None = Field(
        default=None,
        pattern=r"^(header|query|field):[A-Za-z0-9._-]+$",
        description="Keeps a client on one arm of a split: `header:<name>`, `query:<name>` or `field:<name>`.",
    )
    budget_ms: float | None = Field(
        default=None, gt=0, description="The request's latency budget (default: `default_budget_ms`)."
    )
    fallback: list[Name] = Field(
        default_factory=list, description="Cheaper models to downgrade to, in order, when the budget would be missed."
    )
    priority: int | None = Field(
        default=None, ge=1, le=3, description="The priority level (1 = highest), also sent to Triton."
    )
    hedge: HedgeSpec | None = Field(
        default=None, description="Also ask the next tier when the first is slow; the first good answer wins."
    )
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Bounds on what a request may ask for.")
    cache: RouteCacheSpec | None = Field(default=None, description="This route's opt-in to the result cache.")
    resize: Literal["reject", "upscale"] = Field(
        default="reject",
        description="A size over a tier's native_side: left to the tier (which refuses what it cannot make: 400, "
        "param size), or made at its native size and upscaled (Lanczos).",
    )
    client_hints: ClientHintsSpec | None = Field(
        default=None,
        description="A smaller size or a faster tier for a client on a constrained network (Client Hints).",
    )


class TenantJobsSpec(Strict):
    """A tenant's own limits on async jobs (needs the top-level ``jobs:`` block)."""

    max_running: int = Field(ge=1, le=1000, description="Its jobs running at once over all replicas.")


class TenantSpec(Strict):
    """One tenant: its API keys (``${ENV}`` or a mounted Secret file's contents; kept
    only as hashes) and what it may do."""

    keys: list[SecretStr] = Field(
        default_factory=list, description="Its API keys, usually `${VAR}`; kept only as SHA-256 digests."
    )
    key_files: list[str] = Field(
        default_factory=list,
        description="Files holding one key each (a mounted Kubernetes Secret), read at every (re)load.",
    )
    requests_per_s: float | None = Field(default=None, gt=0, description="Its request rate, at most (GCRA).")
    burst: int = Field(default=1, ge=1, description="Requests it may send at once above `requests_per_s`.")
    images_per_day: int | None = Field(default=None, ge=1, description="Images per UTC day, at most.")
    max_concurrency: int | None = Field(default=None, ge=1, description="Its requests in flight, at most.")
    priority_ceiling: int | None = Field(
        default=None, ge=1, le=3, description="The highest priority level it is ever served at."
    )
    routes: list[Name] | None = Field(default=None, description="The routes and models it may use (default: all).")
    overrides: list[Literal["X-Priority", "X-Canary", "X-Intent"]] = Field(
        default_factory=list, description="The override headers it may send (others are ignored)."
    )
    budget: BudgetSpec | None = Field(default=None, description="Its spend limits (`null`: none, not the defaults).")
    jobs: TenantJobsSpec | None = Field(default=None, description="Its own limits on async jobs.")


class TenantsSpec(Strict):
    """``open``: anyone who reaches the port (as before); ``keys``: an API key of a tenant."""

    mode: Literal["open", "keys"] = Field(
        default="open", description="`open`: anyone who reaches the port; `keys`: an API key of a tenant."
    )
    tenants: dict[Name, TenantSpec] = Field(default_factory=dict, description="The tenants, by name.")
    budget_defaults: BudgetSpec | None = Field(
        default=None, description="The budget of every tenant that does not give its own (`budget: null` opts out)."
    )


class RoutesFile(Strict):
    """routes.yaml: backends, logical models, and the routes that choose between them."""

    version: Literal[1] = Field(default=1, description="The file format's version: 1.")
    backends: dict[Name, BackendSpec] | None = Field(
        default=None,
        description="Where models run, by name: Triton servers and hosted APIs (default: one Triton at `$TRITON_URL`).",
    )
    models: dict[Name, ModelSpec] = Field(
        default_factory=dict, description="Logical models, by the names clients use and routes refer to."
    )
    routes: list[RouteSpec] = Field(default_factory=list, description="The routes; the first that matches wins.")
    default_route: Name | RouteSpec | None = Field(
        default=None, description="What serves a request no route matches: a model or route name, or a route."
    )
    default_budget_ms: float = Field(default=5000.0, gt=0, description="The latency budget of routes that give none.")
    cache: CacheSpec | None = Field(default=None, description="The result cache's store (routes opt in).")
    state: StateSpec | None = Field(
        default=None, description="Where state that must last lives (rollouts, tenants' limits, jobs, budgets)."
    )
    jobs: JobsSpec | None = Field(default=None, description="Async image jobs (`POST /v1/images/jobs`).")
    billing: BillingSpec | None = Field(
        default=None, description="Prices' common terms; then every model needs a price."
    )
    aliases: dict[Annotated[str, Field(min_length=1, max_length=128)], Name] = Field(
        default_factory=dict,
        description="Other names for what a client may put in `model` (OpenAI's model names, say): each stands "
        "for a logical model, a route, or `auto` (route by the rules).",
    )
    tenants: TenantsSpec | None = Field(
        default=None, description="Who may call, and their limits (or `{file: tenants.yaml}`)."
    )
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="The environment variables `${VAR}` may read, beside those always allowed and "
        "`ROUTER_CONFIG_ENV`'s.",
    )
    secret_dirs: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="The directories key_files and tenants.file may be read from (default: routes.yaml's own).",
    )
