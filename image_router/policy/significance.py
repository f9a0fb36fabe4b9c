"""Small-sample tests for a canary's analysis: is the canary *worse* than its baseline?

Two questions, each one-sided at a confidence level (0.95 by default):

* **A rate** (errors, downgrades, degenerate images): is the canary's rate more than
  ``margin`` above the baseline's? We take the lower bound of the difference of the two
  proportions by **Newcombe's hybrid score interval** (method 10 of Newcombe 1998),
  built from the two Wilson score intervals. It keeps its coverage at the sample sizes
  a canary step sees (tens of requests) and with rates at or near 0, where the Wald
  interval (``p ± z·se``) is both too narrow and undefined at p = 0, and it needs no
  tables, unlike Fisher's exact test with a margin. A failure needs the *lower* bound
  above the margin: an unlucky handful of errors is not enough.
* **The p95 latency**: is the canary's p95 above ``ratio`` times the baseline's? Under
  "no worse" at most 5 % of the canary's answers exceed that bound; seeing ``k`` of
  ``n`` above it has the exact binomial tail probability ``P(X >= k | n, 0.05)``, and
  the canary fails when that is below ``1 - confidence``. This is the sign test for a
  quantile, exact at any ``n``. The baseline's p95 is taken as known (its sample is the
  larger); latencies come from histogram buckets, and only samples surely above the
  bound (their bucket starts above it) count, so bucketing never fails a canary.

Pure functions of counts; nothing here reads a clock.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["binomial_tail", "newcombe_lower", "wilson", "z_for"]


def z_for(confidence: float) -> float:
    """The one-sided normal quantile for ``confidence`` (0.95 → 1.645)."""
    return NormalDist().inv_cdf(confidence)


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` (``(0, 1)`` when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_lower(k1: int, n1: int, k2: int, n2: int, z: float) -> float:
    """The lower confidence bound of ``k1/n1 - k2/n2`` (Newcombe's hybrid score)."""
    if n1 <= 0 or n2 <= 0:
        return -1.0
    p1, p2 = k1 / n1, k2 / n2
    lo1, _ = wilson(k1, n1, z)
    _, hi2 = wilson(k2, n2, z)
    return (p1 - p2) - math.sqrt((p1 - lo1) ** 2 + (hi2 - p2) ** 2)


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, exactly (summed in log space)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        total += math.exp(log_term)
    return min(1.0, total)
