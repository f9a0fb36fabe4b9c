"""State that must last: rollouts, tenants' shared limits (and jobs, deliveries, budgets).

Not a cache: nothing here is evicted. ``sqlite://`` for one machine (the default),
``redis://`` (a non-evicting server) for replicas on several. See
:mod:`router.state.base` for the protocol.
"""

from router.state.base import Committed, StateStore
from router.state.factory import open_state, reopen_state
from router.state.guard import Bounded, GuardedState
from router.state.redis import RedisState
from router.state.sqlite import SqliteState
from router.state.txn import Txn

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
