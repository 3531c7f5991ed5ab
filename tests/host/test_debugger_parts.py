"""The debugger's small parts: bounding what events show, and naming steps in breakpoints."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait import DebugError
from plait.engine.debugger import Breakpoint, step_matches, without_indexes
from plait.templates.engine import TemplateEngine
from plait.values import BOUND, bounded

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=30,
)


def test_a_small_value_is_itself_and_a_large_one_a_preview_with_its_size():
    small = {"a": 1, "b": ["x"] * 10}
    assert bounded(small) is small
    big = {"keep": "me", "doc": "y" * (BOUND + 10)}
    shown = bounded(big)
    assert shown["keep"] == "me"
    assert shown["doc"] == {
        "$truncated": True,
        "size": BOUND + 12,
        "preview": json.dumps("y" * (BOUND + 10))[:200],
    }
    assert bounded("z" * (BOUND * 2))["$truncated"] is True


@given(JSON)
def test_bounding_never_changes_what_fits(value):
    text = json.dumps(value)
    if len(text) <= BOUND:
        assert bounded(value) == value
    assert len(json.dumps(bounded(value))) <= max(len(text), BOUND * 2)


@pytest.mark.parametrize(
    ("spec", "step_id", "path", "matches"),
    [
        ("fetch", "fetch", "fetch", True),
        ("fetch", "fetch", "each[2].fetch", True),
        ("each[2].fetch", "fetch", "each[2].fetch", True),
        ("each[2].fetch", "fetch", "each[3].fetch", False),
        ("each.fetch", "fetch", "each[3].fetch", True),
        ("p.a", "a", "p[primary].a", True),
        ("other", "fetch", "each[2].fetch", False),
    ],
)
def test_a_breakpoint_names_a_step_by_id_path_or_path_without_indexes(spec, step_id, path, matches):
    assert step_matches(spec, step_id, path) is matches


def test_paths_lose_their_indexes_and_branch_keys():
    assert without_indexes("each[12].inner[a].x") == "each.inner.x"
    assert without_indexes("plain") == "plain"


def test_a_breakpoint_is_checked_when_made_and_round_trips():
    templates = TemplateEngine()
    with pytest.raises(DebugError, match="at must be one of"):
        Breakpoint.make(templates, at="during", step="a", condition=None)
    with pytest.raises(DebugError, match="needs the step"):
        Breakpoint.make(templates, at="before", step=None, condition=None)
    with pytest.raises(DebugError, match="does not parse"):
        Breakpoint.make(templates, at="before", step="a", condition="x ==")
    bp = Breakpoint.make(templates, at="after", step="a", condition="item > 1", run_id="r1")
    again = Breakpoint.from_dict(templates, bp.to_dict())
    assert (
        again.to_dict()
        == bp.to_dict()
        == {
            "id": bp.id,
            "at": "after",
            "step": "a",
            "condition": "item > 1",
            "runId": "r1",
        }
    )
    assert again.template is not None and again.template.render({"item": 2}) is True
