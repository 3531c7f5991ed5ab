"""The token a host issues can be given on the command line as it is."""

from __future__ import annotations

import pytest

import plait
from plait.config import HostConfig

pytestmark = pytest.mark.timeout(30)


def test_no_issued_token_reads_as_a_command_line_option(tmp_path):
    # One token in 64 would start with "-" (base64url): `--token -x...` is then an option to
    # argparse, and `plait runs list --token <token>` fails. 2,000 draws meet that case.
    host = plait.Host(HostConfig.model_validate({"host": {"data_dir": str(tmp_path)}}))
    tokens = [host.issue_token() for _ in range(2000)]
    assert not any(token.startswith("-") for token in tokens)
    assert len(set(tokens)) == len(tokens) and all(len(t) >= 43 for t in tokens)
    assert (tmp_path / "token").read_text().strip() == tokens[-1]
