"""Canaries that promote and roll back themselves (see :mod:`image_router.rollouts.controller`;
the policy it runs is :mod:`image_router.policy.rollout`)."""

from image_router.rollouts.controller import RolloutController

__all__ = ["RolloutController"]
