"""A test model repository for the rollout tests: variants of one small model, each set
by its config parameters (see ``model.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["VARIANTS", "write_models", "write_repository"]

HERE = Path(__file__).parent
VARIANTS = {
    "base": {"delay_ms": "40"},
    "good": {"delay_ms": "40", "shift": "3"},
    "errors": {"delay_ms": "40", "fail": "true"},
    "slow": {"delay_ms": "80"},
    "blank": {"delay_ms": "40", "blank": "true"},
    # tests/integration/test_rollout_rows.py
    "sluggish": {"delay_ms": "2000"},  # too slow for a 1 s budget: never sent one
    "wide": {"delay_ms": "400"},  # shadows that overlap
    "batched": {"delay_ms": "150"},  # a baseline whose answers come in batches
}
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 16
input [
  {{ name: "PROMPT", data_type: TYPE_STRING, dims: [ 1 ] }},
  {{ name: "SEED", data_type: TYPE_INT64, dims: [ 1 ], optional: true }},
  {{ name: "STEPS", data_type: TYPE_INT32, dims: [ 1 ], optional: true }},
  {{ name: "WIDTH", data_type: TYPE_INT32, dims: [ 1 ], optional: true }},
  {{ name: "HEIGHT", data_type: TYPE_INT32, dims: [ 1 ], optional: true }},
  {{ name: "INIT_IMAGE", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ], optional: true }},
  {{ name: "MASK", data_type: TYPE_UINT8, dims: [ -1, -1 ], optional: true }},
  {{ name: "STRENGTH", data_type: TYPE_FP32, dims: [ 1 ], optional: true }}
]
output [ {{ name: "IMAGE", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
{parameters}
"""


def write_repository(root: Path) -> Path:
    """The variants as a Triton model repository under ``root``."""
    return write_models(root, VARIANTS)


def write_models(root: Path, variants: dict[str, dict[str, str]]) -> Path:
    """Models of ``model.py`` named and configured by ``variants`` (name -> parameters)
    as a Triton model repository under ``root``: e.g. tiers whose service time is a
    sleep, the same on any machine however busy."""
    for name, params in variants.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "model.py", root / name / "1" / "model.py")
        lines = "\n".join(f'parameters {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in params.items())
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, parameters=lines))
    return root
