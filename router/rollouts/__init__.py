"""Canaries that promote and roll back themselves (see :mod:`router.rollouts.controller`;
the policy it runs is :mod:`router.policy.rollout`)."""

from router.rollouts.controller import RolloutController

__all__ = ["RolloutController"]
