"""A tool's docstring reaches MCP clients as Markdown, its arguments' text in the input schema.

Unit tests of :mod:`plait.plugins.docstrings` on Google, reST, numpydoc and epydoc docstrings,
then ``Tool.from_function``, then a plugin loaded by a real ``plait serve --stdio`` whose
``tools/list`` the official MCP SDK client reads, built-in tools included.
"""

from __future__ import annotations

import re
from typing import Annotated

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import Field

import plait
from plait.plugins.docstrings import describe, to_markdown
from plait.plugins.types import Tool

from ..e2e.host_process import HostProcess
from ..e2e.mcp_helpers import sdk_client

MARKUP = re.compile(r"``|:[a-z]+(?::[a-z]+)*:`|^\s*(?:Args|Returns|Raises):\s*$|^\.\. ", re.M)
"""reST markup a description must not show: double backticks, roles, sections, directives."""

GOOGLE = """
Fetch rows of ``table`` with :func:`~shop.db.query`.

Cached by :class:`the cache <shop.cache.Cache>`; see :ref:`caching` and
`the guide <https://example.org/guide>`_.

.. note::
   Reads a snapshot, never
   the live table.

Args:
    table (str): Name of the table, one of :data:`shop.TABLES`.
    limit: At most this many ``rows``,
        counted after filtering.
    *columns: Which columns.

Returns:
    list[str]: The rows.

Raises:
    KeyError: No such table.
"""

REST = """
Fetch rows.

:py:meth:`Table.scan <shop.Table.scan>` does the reading, :func:`!raw` the rest.

.. warning:: Slow on
   big tables.

.. versionadded:: 1.2

.. deprecated:: 2.0 Use :func:`fetch_all`.

.. _fetch-target:

:param table: the ``table``
:type table: str
:param int limit: at most
    this many
:returns: the rows
:rtype: list[str]
:raises KeyError: no such table
"""


def test_google_docstring_loses_its_sections_and_markup():
    description, params = describe(GOOGLE)
    assert description == (
        "Fetch rows of `table` with `query`.\n\n"
        "Cached by `the cache`; see caching and\n"
        "[the guide](https://example.org/guide).\n\n"
        "Note: Reads a snapshot, never\nthe live table."
    )
    assert params == {
        "table": "Name of the table, one of `shop.TABLES`.",
        "limit": "At most this many `rows`,\ncounted after filtering.",
        "columns": "Which columns.",
    }


def test_rest_fields_become_parameters_and_directives_their_text():
    description, params = describe(REST)
    assert description == (
        "Fetch rows.\n\n"
        "`Table.scan` does the reading, `raw` the rest.\n\n"
        "Warning: Slow on\nbig tables.\n\n"
        "New in version 1.2.\n\n"
        "Deprecated since version 2.0: Use `fetch_all`."
    )
    assert params == {"table": "the `table`", "limit": "at most\nthis many"}


def test_numpydoc_notes_examples_and_deprecation_stay_in_the_description():
    description, params = describe(
        """
        Sum the ``values``.

        .. deprecated:: 3.1
            Use :func:`math.fsum`.

        Parameters
        ----------
        values : list of float
            The numbers, see :class:`~numbers.Real`.

        Returns
        -------
        float

        Notes
        -----
        Order matters for ``float``.

        Examples
        --------
        >>> total([1, 2])
        3.0
        """
    )
    assert description == (
        "Sum the `values`.\n\n"
        "Deprecated since version 3.1: Use `math.fsum`.\n\n"
        "Note: Order matters for `float`.\n\n"
        "Example:\n\n```pycon\n>>> total([1, 2])\n3.0\n```"
    )
    assert params == {"values": "The numbers, see `Real`."}


def test_epydoc_parameters():
    assert describe("Add ``a`` and ``b``.\n\n@param a: the first\n@return: the sum") == (
        "Add `a` and `b`.",
        {"a": "the first"},
    )


@pytest.mark.parametrize(
    ("text", "markdown"),
    [
        ("``x == 1``", "`x == 1`"),
        ("``a`b``", "`` a`b ``"),
        (":func:`run`", "`run`"),
        (":func:`~plait.engine.Engine.run`", "`run`"),
        (":meth:`~Engine.run()`", "`run()`"),
        (":py:class:`plait.Host`", "`plait.Host`"),
        (":class:`the host <plait.Host>`", "`the host`"),
        (":exc:`!NotLinked`", "`NotLinked`"),
        (":ref:`the cache <cache>`", "the cache"),
        (":term:`workflow`", "workflow"),
        ("`already code`", "`already code`"),
        (
            "`PEP 8 <https://peps.python.org/pep-0008/>`_",
            "[PEP 8](https://peps.python.org/pep-0008/)",
        ),
        ("`a section`_", "a section"),
        ("*emph* and **strong**", "*emph* and **strong**"),
        (
            "Example::\n\n    run(1)\n    run(2)\n\nAfter.",
            "Example:\n\n```\nrun(1)\nrun(2)\n```\n\nAfter.",
        ),
        ("Text. ::\n\n    code", "Text.\n\n```\ncode\n```"),
        (".. code-block:: python\n   :linenos:\n\n   x = 1", "```python\nx = 1\n```"),
        (".. note:: One line.", "Note: One line."),
        (".. admonition:: Heads up\n\n   Mind the gap.", "Heads up: Mind the gap."),
        (".. seealso:: :func:`other`", "See also: `other`"),
        ("Warning:\n    Google-style, indented.", "Warning: Google-style, indented."),
        ("Before.\n\n.. a comment\n   on two lines\n\nAfter.", "Before.\n\nAfter."),
        ("Calls:\n\n>>> f(1)\n2", "Calls:\n\n```pycon\n>>> f(1)\n2\n```"),
        (
            "```\n``as is`` :func:`in Markdown code`\n```",
            "```\n``as is`` :func:`in Markdown code`\n```",
        ),
    ],
)
def test_markup_converts_to_markdown(text, markdown):
    assert to_markdown(text) == markdown


def test_plain_and_empty_docstrings():
    def plain() -> None:
        """Add two numbers.

        Works on *any* two.
        """

    def undocumented() -> None:
        pass

    assert describe(plain) == ("Add two numbers.\n\nWorks on *any* two.", {})
    assert describe(undocumented) == ("", {})
    assert describe(None) == ("", {})
    # a line opening with a role is text, not a reST field
    assert describe("Run it.\n\n:func:`run` does the rest.") == (
        "Run it.\n\n`run` does the rest.",
        {},
    )


@settings(max_examples=300, deadline=None)
@example("::\t:param .. note:::")  # docstring_parser raised IndexError on it (0.18)
@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                " ",
                ":",
                "`",
                "``",
                "\n",
                "    ",
                "::",
                ".. note::",
                ":param ",
                "Args:",
                "Returns:",
                "@param ",
                "----",
                ">>>",
                "x: y",
                ":func:`f`",
                "*",
            ]
        ),
        max_size=30,
    ).map("".join)
)
def test_any_docstring_is_described_without_raising(text):
    description, params = describe(text)
    assert isinstance(description, str)
    assert all(isinstance(v, str) for v in params.values())


# -- Tool.from_function ---------------------------------------------------------------------------


def fetch(
    table: str, limit: int = 10, order: Annotated[str, Field(description="Sort key.")] = "id"
):
    """Fetch rows of ``table``.

    Args:
        table: The ``table``.
        limit: At most this many.
        order: Shadowed by the Field's description.
        missing: Not a parameter: ignored.

    Returns:
        The rows.
    """


def test_a_tool_takes_its_docstring_description_and_parameters():
    tool = Tool.from_function(fetch)
    assert tool.description == "Fetch rows of `table`."
    properties = tool.input_schema["properties"]
    assert properties["table"] == {"type": "string", "description": "The `table`."}
    assert properties["limit"]["description"] == "At most this many."
    assert properties["order"]["description"] == "Sort key."
    assert "missing" not in properties


def test_a_description_the_author_gave_is_used_as_written():
    given_here = Tool.from_function(fetch, description="Rows of ``table``, :func:`as is`.")
    assert given_here.description == "Rows of ``table``, :func:`as is`."

    decorated = Tool.from_function(plait.tool("t.x", description="Kept ``verbatim``.")(fetch))
    assert decorated.description == "Kept ``verbatim``."
    # the parameters' documentation still comes from the docstring
    assert decorated.input_schema["properties"]["table"]["description"] == "The `table`."


# -- through a real host and the MCP SDK client ---------------------------------------------------

PLUGIN = '''\
from typing import Annotated

from pydantic import Field

import plait


def fetch_rows(
    table: str,
    limit: int = 10,
    order: Annotated[str, Field(description="Column to sort by.")] = "id",
) -> list[str]:
    """Fetch rows of ``table`` with :func:`~shop.db.query`.

    Cached by :class:`the cache <shop.cache.Cache>`.

    .. note::
       Reads a snapshot.

    Args:
        table: Name of the table, one of :data:`shop.TABLES`.
        limit: At most this many ``rows``.
        order: Documented here, but the Field says it first.

    Returns:
        list[str]: The rows.

    Raises:
        KeyError: No such table.
    """
    return [table] * limit


@plait.tool("docs.explicit", description="Kept ``as written``.")
def explicit(x: int) -> int:
    """Not shown :func:`anywhere`."""
    return x


@plait.hookimpl
def register_tools(register):
    register(fetch_rows, "docs.fetch", blocking=False)
    register(explicit)
'''


@pytest.mark.anyio
async def test_tools_list_shows_clean_descriptions_to_the_mcp_sdk_client(tmp_path):
    host = HostProcess(tmp_path, plugin=PLUGIN)
    with anyio.fail_after(30):
        async with sdk_client(host.command("--stdio"), tmp_path, env=host.environment()) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    fetched = tools["docs.fetch"]
    assert fetched.description == (
        "Fetch rows of `table` with `query`.\n\nCached by `the cache`.\n\nNote: Reads a snapshot."
    )
    assert fetched.input_schema["properties"] == {
        "table": {"type": "string", "description": "Name of the table, one of `shop.TABLES`."},
        "limit": {"type": "integer", "default": 10, "description": "At most this many `rows`."},
        "order": {"type": "string", "default": "id", "description": "Column to sort by."},
    }
    assert tools["docs.explicit"].description == "Kept ``as written``."
    # the built-in tools (plait.steps.stdtools) show no reST either
    builtin = {"files.list", "files.read", "text.stats", "json.parse", "math.sum", "time.now"}
    builtin |= {"time.sleep", "chaos.fail"}
    assert builtin <= set(tools)
    for name in builtin:
        texts = [tools[name].description or ""]
        texts += [p.get("description", "") for p in tools[name].input_schema["properties"].values()]
        for text in texts:
            assert not MARKUP.search(text), (name, text)
    assert tools["time.sleep"].description == (
        "Wait `seconds` (at most 3600) without blocking; returns the seconds slept."
    )
