"""Routes files used by the gateway integration tests (all on the session's Triton)."""

TIERS = """
backends:
  triton: {url: "${TRITON_URL}"}
models:
  draft: {backend: triton, triton_model: draft, latency_hint_ms: 150}
  preview: {backend: triton, triton_model: preview, latency_hint_ms: 700}
  quality: {backend: triton, triton_model: quality, latency_hint_ms: 3500}
  noop: {backend: triton, triton_model: noop, latency_hint_ms: 20}
  noop-canary: {backend: triton, triton_model: noop, latency_hint_ms: 20}
"""

ROUTING = (
    TIERS
    + """
routes:
  - name: sketch
    match: "prompt:(?i)\\\\bsketch\\\\b"
    model: draft
    budget_ms: 2000
  - name: beta
    match: {headers: {X-Beta: "yes"}}
    model: noop
  - name: hq
    match: {intent: quality}
    model: quality
    budget_ms: 8000
    fallback: [preview, draft]
  - name: tight
    match: {intent: tight}
    model: quality
    budget_ms: 1500
    fallback: [preview, draft]
  - name: impossible
    match: {intent: impossible}
    model: quality
    budget_ms: 300
  - name: canary
    match: {intent: canary}
    split:
      - {model: noop, weight: 80}
      - {model: noop-canary, weight: 20, canary: true}
    sticky: header:X-User-Id
default_route:
  name: default
  model: preview
  budget_ms: 5000
  fallback: [draft]
"""
)
