"""The KServe v2 gRPC front door (``inference.GRPCInferenceService``) and gRPC health.

Written against the data plane (:class:`~image_router.gateway.Gateway`) and the shared
telemetry, like the HTTP edge, and importing nothing from :mod:`image_router.http`.
"""

from image_router.rpc.server import GrpcEdge, GrpcOptions

__all__ = ["GrpcEdge", "GrpcOptions"]
