"""Routing policy: pure functions over the compiled table and request facts.

Nothing here does I/O or reads a clock or an RNG of its own: the clock and the random
source are passed in, so every decision is reproducible in a unit test.
"""

from image_router.policy.budget import Attempt, Plan, plan_attempt
from image_router.policy.match import RequestFacts, select_route
from image_router.policy.split import Choice, choose_arm, sticky_key

__all__ = [
    "Attempt",
    "Choice",
    "Plan",
    "RequestFacts",
    "choose_arm",
    "plan_attempt",
    "select_route",
    "sticky_key",
]
