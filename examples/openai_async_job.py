"""Submit a generation as an async job, wait for it, and fetch its image (docs/jobs.md).

    python examples/openai_async_job.py

The job API needs a `jobs:` block in routes.yaml (the shipped file has `jobs: {}`, the
defaults); without one the gateway answers 404 and this script says so. The same OpenAI call as a
synchronous generation, with `Prefer: respond-async`, answers 202 at once with a job;
`POST /v1/images/jobs` with the same body does too. The job runs on idle capacity, and
`Prefer: wait=N` on a poll holds the answer until the job changes (at most N s).

Environment: ROUTER_URL (default http://127.0.0.1:8080), OPENAI_API_KEY (keys mode: a
tenant sees only its own jobs), EXAMPLES_OUT (where the image goes; default: the
current directory).
"""

from __future__ import annotations

import base64
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
from openai import OpenAI
from openai.types import ImagesResponse

ROUTER_URL = os.environ.get("ROUTER_URL", "http://127.0.0.1:8080")
OUT = Path(os.environ.get("EXAMPLES_OUT", "."))
FINISHED = {"completed", "failed", "cancelled", "expired"}


def main() -> int:
    client = OpenAI(base_url=f"{ROUTER_URL}/v1", api_key=os.environ.get("OPENAI_API_KEY") or "unused")
    try:
        job = client.images.generate(
            prompt="a sketch of a windmill",
            extra_headers={
                "Prefer": "respond-async",
                # a retry with the same key gets the same job, never a second one
                "Idempotency-Key": f"example-{uuid.uuid4()}",
            },
            extra_body={"seed": 5, "metadata": {"example": "openai_async_job"}},
        )
    except openai.NotFoundError as exc:
        print(f"no job API here ({exc.message}): add `jobs: {{}}` to routes.yaml", file=sys.stderr)
        return 2
    # The job object is a superset of ImagesResponse: its own fields are in model_extra.
    state: dict[str, Any] = job.model_extra or {}
    job_id = state["id"]
    print(f"submitted {job_id}: {state['status']}")

    deadline = time.monotonic() + 300
    while state["status"] not in FINISHED:
        if time.monotonic() > deadline:
            print(f"{job_id} is still {state['status']} after 300 s", file=sys.stderr)
            return 1
        # a long poll: answered as soon as the job changes, else after 10 s
        state = client.get(f"/images/jobs/{job_id}", cast_to=dict, options={"headers": {"Prefer": "wait=10"}})
        print(f"{job_id}: {state['status']} queue={state.get('queue')} progress={state.get('progress')}")
    if state["status"] != "completed":
        print(f"{job_id} ended {state['status']}: {state.get('error')}", file=sys.stderr)
        return 1

    # /result is what the synchronous call would have answered. A job's images are
    # `url`s by default (kept for jobs.retention_s); ask for response_format="b64_json"
    # at submission to have them inline instead.
    result = client.get(f"/images/jobs/{job_id}/result", cast_to=ImagesResponse)
    for index, image in enumerate(result.data or []):
        if image.url:  # in keys mode the image needs the tenant's key too
            fetched = httpx.get(image.url, headers={"Authorization": f"Bearer {client.api_key}"}, timeout=60)
            fetched.raise_for_status()
            data = fetched.content
        else:
            data = base64.b64decode(image.b64_json or "")
        path = OUT / f"openai_async_job_{index}.{result.output_format or 'png'}"
        path.write_bytes(data)
        print(f"wrote {path}")
    if not result.data:
        print("the result holds no image", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
