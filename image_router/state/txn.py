"""One atomic step over several keys and ordered indexes: what a job queue needs.

A job's record, its place in its tier's queue, its tenant's list and its idempotency
key must change together, or a crash between two writes loses a job (in a queue with
no record) or hides one (a record in no queue). :class:`Txn` says it all at once, as
etcd's ``Txn`` does: the values some keys must hold (``expect``; ``None``: absent), the
indexes that must have room (``room``), and, when all of that holds, what to write,
delete, add to indexes and remove from them. A store applies it in one Lua script
(Redis) or one ``BEGIN IMMEDIATE`` transaction (SQLite), or not at all.

An *index* is an ordered set of members (strings) with a float score each — a Redis
sorted set: a tier's queue by fair-share tag, running jobs, a tenant's jobs by time,
webhook deliveries by when they are due. :meth:`StateStore.scan` reads one in score
order. Indexes live beside keys but apart from them (a key and an index may share a
name without meeting).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Txn"]


@dataclass(frozen=True, slots=True)
class Txn:
    expect: tuple[tuple[str, bytes | None], ...] = ()  # (key, value it must hold; None: absent)
    room: tuple[tuple[str, int], ...] = ()  # (index, the most members it may hold after the adds)
    put: tuple[tuple[str, bytes, float | None], ...] = ()  # (key, value, ttl_s; None: never expires)
    delete: tuple[str, ...] = ()
    add: tuple[tuple[str, str, float], ...] = ()  # (index, member, score): added or re-scored
    remove: tuple[tuple[str, str], ...] = ()  # (index, member)

    def keys(self) -> list[str]:
        """Every key and index named (declared to Redis, as its scripts must)."""
        names = [k for k, _ in self.expect] + [i for i, _ in self.room] + [k for k, _, _ in self.put]
        names += list(self.delete) + [i for i, _, _ in self.add] + [i for i, _ in self.remove]
        return list(dict.fromkeys(names))
