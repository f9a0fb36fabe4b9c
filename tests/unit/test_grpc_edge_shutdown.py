"""The gRPC edge's readiness watch ends when cancelled, even when the cancel lands just
as a check completes: with Python 3.11's ``asyncio.wait_for`` around the check, the
check's answer won over the cancel, the loop went on, and a gateway's shutdown waited
for it until it was killed (1 gateway stop in ~13 took over 15 s in the test suite)."""

from __future__ import annotations

import asyncio

from image_router.rpc import GrpcEdge, GrpcOptions
from image_router.telemetry import Tracing
from image_router.telemetry.requests import Recorder
from tests.unit.test_dispatch import gateway


async def test_a_cancel_that_lands_as_a_check_completes_ends_the_watch() -> None:
    gw, _ = gateway({})
    edge = GrpcEdge(gw, Recorder(None, None), Tracing.off(), GrpcOptions(host="127.0.0.1", port=0))
    checks = 0

    async def ready() -> bool:
        nonlocal checks
        checks += 1
        await asyncio.sleep(0)
        assert edge._watch is not None
        edge._watch.cancel()  # the shutdown's cancel, in the same step as the answer
        return True

    gw.ready = ready  # type: ignore[method-assign]
    await edge.start()
    try:
        assert edge._watch is not None
        done, _ = await asyncio.wait([edge._watch], timeout=5)
        assert done, "the watch went on after its cancel"
        assert edge._watch.cancelled() and checks == 1
    finally:
        await edge.server.stop(None)
