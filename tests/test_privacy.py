"""A workspace holds personal data (emails, behaviour): it is private to its owner."""

from __future__ import annotations

import stat

import segengine


def test_a_new_workspace_is_private_to_its_owner(tmp_path):
    ws = segengine.Workspace.init(tmp_path / "private")
    assert stat.S_IMODE(ws.path.stat().st_mode) == 0o700


def modes(root) -> dict[str, int]:
    from pathlib import Path

    root = Path(root)
    found = {".": stat.S_IMODE(root.stat().st_mode)} if root.is_dir() else {}
    paths = root.rglob("*") if root.is_dir() else [root]
    for path in paths:
        found[path.relative_to(root).as_posix() if root.is_dir() else path.name] = (
            stat.S_IMODE(path.stat().st_mode))
    return found


def test_everything_written_that_holds_emails_is_owner_only(tmp_path, monkeypatch):
    """Whatever the umask: workspace files, rejects and --report files, exports and the
    send journal are 0600, their directories 0700."""
    import os

    from conftest import write
    from test_send import Mailbox

    old = os.umask(0o022)
    try:
        ws = segengine.Workspace.init(tmp_path / "ws")
        write(tmp_path / "c.csv", "email,name\na@x.io,Ann\nbad,Bob\n")
        ws.import_contacts(tmp_path / "c.csv", rejects=tmp_path / "rejects.csv")
        ws.import_contacts(tmp_path / "c.csv")  # the default report, inside the workspace
        write(tmp_path / "list.csv", "email\nnobody@x.io\n")
        ws.unsubscribe(emails=tmp_path / "list.csv", report=tmp_path / "unknown.csv")
        everyone = {"name": "all", "rules": []}
        ws.export(everyone, output=tmp_path / "out.csv")
        ws.export(everyone, output=tmp_path / "out.parquet")
        ws.save_segment(everyone)
        from aiosmtpd.controller import Controller
        from test_send import free_port

        port = free_port()
        controller = Controller(Mailbox(), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            ws.send("spring", "all", subject="Hi", html="<p>Hi</p>", from_addr="n@example.com",
                    smtp=f"127.0.0.1:{port}", tls="none")
        finally:
            controller.stop()
    finally:
        os.umask(old)
    found = {**modes(ws.path), **{name: modes(tmp_path / name)[name] for name in
             ("rejects.csv", "unknown.csv", "out.csv", "out.parquet")}}
    open_to_others = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not open_to_others
    assert any(name.startswith("sends/") for name in found)
    assert any(name.startswith("rejects/") for name in found)
