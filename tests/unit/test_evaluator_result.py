"""The chief reads the evaluator's latest evaluation from the shared model directory: another
pod's file, so any bytes in it give a bounded dict of finite numbers, or None."""

from __future__ import annotations

import json
import math
import os
import tempfile

from hypothesis import given
from hypothesis import strategies as st

from kubelearn.reporting import EVALUATOR_RESULTS, EVALUATOR_TAIL_BYTES, evaluator_result


def _write(model_dir: str, data: bytes) -> None:
    path = os.path.join(model_dir, EVALUATOR_RESULTS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_the_last_whole_line_wins(tmp_path) -> None:
    assert evaluator_result(str(tmp_path)) is None
    lines = [{"global_step": 100, "accuracy": 0.5}, {"global_step": 200, "accuracy": 0.93,
                                                      "note": "x", "flag": True}]
    _write(str(tmp_path), b"".join(json.dumps(x).encode() + b"\n" for x in lines)
           + b'{"global_step": 300, "accu')  # being written
    assert evaluator_result(str(tmp_path)) == {"global_step": 200, "accuracy": 0.93}


def test_only_the_tail_of_a_long_file_is_read(tmp_path) -> None:
    line = json.dumps({"global_step": 1, "loss": 0.5}).encode() + b"\n"
    _write(str(tmp_path), b"x" * (10 * EVALUATOR_TAIL_BYTES) + b"\n" + line * 3)
    assert evaluator_result(str(tmp_path)) == {"global_step": 1, "loss": 0.5}


@given(st.binary(max_size=3 * EVALUATOR_TAIL_BYTES)
       | st.lists(st.dictionaries(st.text(max_size=100), st.one_of(
           st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(),
           st.just(10 ** 400),
           st.text(max_size=5), st.none()), max_size=40), max_size=5).map(
           lambda rows: b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
def test_any_file_gives_a_bounded_dict_of_finite_numbers_or_none(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as model_dir:
        _write(model_dir, data)
        result = evaluator_result(model_dir)
    if result is not None:
        assert 0 < len(result) <= 16
        for key, value in result.items():
            assert isinstance(key, str) and len(key) <= 64
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
            assert math.isfinite(value)
            assert isinstance(value, float) or abs(value) < 2 ** 63
