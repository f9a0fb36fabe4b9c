"""State that must last: rollouts, tenants' shared limits (and jobs, deliveries, budgets).

Not a cache: nothing here is evicted. ``sqlite://`` for one machine (the default),
``redis://`` (a non-evicting server) for replicas on several. See
:mod:`image_router.state.base` for the protocol.
"""

from image_router.state.base import Committed, StateStore
from image_router.state.factory import open_state, reopen_state
from image_router.state.guard import Bounded, GuardedState
from image_router.state.redis import RedisState
from image_router.state.sqlite import SqliteState
from image_router.state.txn import Txn

__all__ = [
    "Bounded",
    "Committed",
    "GuardedState",
    "RedisState",
    "SqliteState",
    "StateStore",
    "Txn",
    "open_state",
    "reopen_state",
]
