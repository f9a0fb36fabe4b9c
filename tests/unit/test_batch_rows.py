"""The rows of one request in fixed chunks (image_router.pipelines.rows, a model's opt-in
``batch_rows``): the chunks depend only on the request, compatible chunks run in one
pass, anything else row by row, and the rows' times add up to the model's time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from image_router.pipelines.contract import Cancelled, Generation
from image_router.pipelines.rows import chunks, one_pass, run_rows
from image_router.pipelines.triton_model import batch_rows, generate_rows


class Recorder:
    """A generator that records how it was called: passes (their sizes) and single rows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, job: Generation, cancelled: Callable[[], bool] | None = None) -> NDArray[Any]:
        self.calls.append(("row", 1))
        return np.full((job.height, job.width, 3), job.seed % 256, np.uint8)

    def batch(self, jobs: Sequence[Generation], cancelled: Callable[[], bool] | None = None) -> list[NDArray[Any]]:
        self.calls.append(("pass", len(jobs)))
        return [np.full((j.height, j.width, 3), j.seed % 256, np.uint8) for j in jobs]


def rows(n: int, **kw: Any) -> list[Generation]:
    return [Generation(f"p{i}", i, kw.get("steps", 4), kw.get("width", 8), kw.get("height", 8)) for i in range(n)]


def test_chunks_are_cut_by_position_the_last_one_shorter() -> None:
    assert [len(c) for c in chunks(rows(10), 4)] == [4, 4, 2]
    assert [len(c) for c in chunks(rows(3), 1)] == [1, 1, 1]
    assert [[j.seed for j in c] for c in chunks(rows(5), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_rows"):
        chunks(rows(2), 0)


def test_only_text_to_image_rows_of_one_shape_share_a_pass() -> None:
    assert one_pass(rows(3))
    assert not one_pass(rows(1)), "one row is the singleton path"
    mixed = [*rows(1), Generation("q", 9, 4, 16, 8)]
    assert not one_pass(mixed)
    edit = [Generation("e", 1, 4, 8, 8, init_image=np.zeros((8, 8, 3), np.uint8)), *rows(1)]
    assert not one_pass(edit)


def test_a_request_runs_the_same_passes_every_time_whatever_else_is_queued() -> None:
    """The batch shapes a request runs depend on its rows alone: the same request gives
    the same bytes every time (a batched row's bytes depend on the batch size)."""
    first, second = Recorder(), Recorder()
    images_a, _ = run_rows(first, rows(6), lambda: False, 4)
    images_b, _ = run_rows(second, rows(6), lambda: False, 4)
    assert first.calls == second.calls == [("pass", 4), ("pass", 2)]
    assert [i.tobytes() for i in images_a] == [i.tobytes() for i in images_b]
    assert [int(i[0, 0, 0]) for i in images_a] == [0, 1, 2, 3, 4, 5], "rows keep their order"


def test_batch_rows_one_and_generators_without_batch_go_row_by_row() -> None:
    recorder = Recorder()
    run_rows(recorder, rows(3), lambda: False, 1)
    assert recorder.calls == [("row", 1)] * 3

    class Plain:
        def __call__(self, job: Generation, cancelled: Callable[[], bool] | None = None) -> NDArray[Any]:
            return np.zeros((8, 8, 3), np.uint8)

    images, spent = run_rows(Plain(), rows(3), lambda: False, 4)
    assert len(images) == len(spent) == 3


def test_a_pass_is_timed_whole_and_shared_among_its_rows() -> None:
    recorder = Recorder()
    images, spent = generate_rows(recorder, rows(5), lambda: False, 4)  # type: ignore[arg-type]
    assert len(images) == len(spent) == 5
    assert spent[1] == spent[2] == spent[3] and spent[0] >= spent[1], "one pass, shared"
    assert recorder.calls == [("pass", 4), ("row", 1)]


def test_a_cancelled_request_stops_between_chunks() -> None:
    recorder = Recorder()
    asked = iter([False, True])
    with pytest.raises(Cancelled):
        run_rows(recorder, rows(8), lambda: next(asked), 4)
    assert recorder.calls == [("pass", 4)]


@pytest.mark.parametrize(("raw", "value"), [("", 1), ("1", 1), (" 8 ", 8)])
def test_the_batch_rows_parameter(raw: str, value: int) -> None:
    assert batch_rows({"batch_rows": raw}) == value
    assert batch_rows({}) == 1


@pytest.mark.parametrize("raw", ["0", "-2", "four", "2.5"])
def test_a_bad_batch_rows_parameter_fails_the_model_load_by_name(raw: str) -> None:
    with pytest.raises(ValueError, match="batch_rows"):
        batch_rows({"batch_rows": raw})
