"""A workspace holds personal data (emails, behaviour): it is private to its owner."""

from __future__ import annotations

import stat

import segengine


def test_a_new_workspace_is_private_to_its_owner(tmp_path):
    ws = segengine.Workspace.init(tmp_path / "private")
    assert stat.S_IMODE(ws.path.stat().st_mode) == 0o700
