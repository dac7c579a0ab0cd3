"""The ps's memory bound: its setting, its default and how often it is measured."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn.distributed import memory


@pytest.mark.parametrize(("text", "expected"), [
    ("67108864", 64 << 20), ("512Mi", 512 << 20), (" 2Gi ", 2 << 30), ("65536Ki", 64 << 20),
    ("1Ti", 1 << 40)])
def test_limits_parse_as_bytes_or_binary_quantities(text, expected):
    assert memory.parse_limit(text) == expected


@pytest.mark.parametrize("text", ["1.5G", "512M", "-1", "", "1Mi", "0", "\u0661\u0662Mi",
                                  "1e9"])
def test_other_limits_are_refused_naming_the_variable(text):
    with pytest.raises(ValueError, match="KUBELEARN_PS_MEMORY_LIMIT"):
        memory.parse_limit(text)


@given(st.text(max_size=40))
def test_any_text_is_a_limit_of_at_least_the_minimum_or_refused(text):
    try:
        value = memory.parse_limit(text)
    except ValueError as exc:
        assert "KUBELEARN_PS_MEMORY_LIMIT" in str(exc)
        assert "\n" not in str(exc)
    else:
        assert value >= memory.MIN_LIMIT


def test_the_variable_wins_over_the_default():
    assert memory.limit_from_env({"KUBELEARN_PS_MEMORY_LIMIT": "256Mi"}) == 256 << 20
    assert memory.limit_from_env({}) >= memory.MIN_LIMIT


def test_the_default_is_a_share_of_the_containers_limit(monkeypatch, tmp_path):
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(memory, "_CGROUP_LIMITS", (str(limit),))
    limit.write_text("1073741824\n")
    assert memory.limit_from_env({}) == int((1 << 30) * memory.CONTAINER_SHARE)
    limit.write_text("max\n")  # no limit: a share of the machine's memory
    assert memory.container_limit() is None
    assert memory.limit_from_env({}) != int((1 << 30) * memory.CONTAINER_SHARE)


def test_the_watch_measures_at_most_every_check_and_reports_only_what_is_over():
    now, held, measured = [0.0], [100], []

    def measure() -> int:
        measured.append(now[0])
        return held[0]

    watch = memory.Watch(150, measure=measure, clock=lambda: now[0])
    assert watch.over() is None
    now[0] += memory.CHECK_SECS / 2
    held[0] = 200
    assert watch.over() is None  # not measured again yet
    now[0] += memory.CHECK_SECS
    assert watch.over() == 200
    assert measured == [0.0, 1.5 * memory.CHECK_SECS]


def test_what_is_allocated_grows_with_an_allocation():
    import numpy as np

    before = memory.allocated()
    block = np.ones(32 << 20, np.uint8)
    assert memory.allocated() - before >= 30 << 20
    del block
