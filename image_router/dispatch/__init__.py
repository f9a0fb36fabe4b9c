"""Carrying out a routing decision within the request's latency budget.

The dispatcher owns the I/O side of the budget: it fixes the deadline on arrival,
asks each tier's backend for a live :class:`~image_router.policy.forecast.Forecast` (when a
request sent now would finish on its best endpoint, from what is queued there),
folds in its own admission queue, asks :func:`image_router.policy.budget.plan_attempt`
which tier to try with what timeout, enforces that timeout itself (Triton cannot
stop a running request; on timeout the call is cancelled and its connection
dropped), and walks down the fallback chain on timeouts, 5xx and unavailability. A
model that rejects the input (4xx) is not retried elsewhere: the input would be just
as bad.

A tier whose backend reports no endpoint with a closed circuit is skipped at once
(reason ``circuit_open``; the circuits live in the backends, per replica and per
model on each). Per model the dispatcher keeps an admission gate
(``max_concurrency``): a full tier is skipped when a later tier can still answer
(``full``); the last tier may wait in its bounded priority queue, but only as long
as its fastest service time still fits. When nothing was tried because the work
already queued made every tier miss (``busy``, ``full``, ``queue_timeout``), that is
load shedding and says so: ``429 overloaded`` with a ``Retry-After`` of when the
queue should have drained, not a ``504`` that blames the budget. With ``hedge`` on a
route, the next tier is asked too when the first has not answered in time, and the
first good answer wins.

On a route with a ``cache`` block, the result cache takes part through the
:class:`~image_router.dispatch.stored.StoredTiers` seam (implemented in
:mod:`image_router.cache.coordinate`): every tier of the chain is looked up at once on
arrival (one store round trip, bounded), and a tier whose result is stored is a tier
that answers at once — its forecast is zero, so the budget policy serves it wherever
the walk down the chain reaches it. A tier about to be generated is first matched
against identical generations in flight (this replica's, and through a lease in a
shared store, other replicas'); a generation runs as a task of its own, so a waiter
that leaves never cancels it, and its result is stored whoever is still waiting.

The modules, one job each:

* :mod:`~image_router.dispatch.dispatcher` — :class:`Dispatcher`, what outlives a request
  (admission gates, forecasts, p95, the downgrade ring, metrics);
* :mod:`~image_router.dispatch.walk` — one request's walk down its chain;
* :mod:`~image_router.dispatch.steps` (pure) — how to try the tier the budget plan chose;
* :mod:`~image_router.dispatch.attempt` — the admission wait, one timed call, the hedged pair;
* :mod:`~image_router.dispatch.outcome` (pure) — the answer or the error, and the downgrade;
* :mod:`~image_router.dispatch.stored` — the seam to the result cache.

Guarantee: a call returns or raises no later than ``budget + one scheduling tick``.
"""

from image_router.dispatch.dispatcher import Dispatcher
from image_router.served import CachePlan, Served

__all__ = ["CachePlan", "Dispatcher", "Served"]
