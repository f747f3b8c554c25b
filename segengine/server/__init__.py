"""`segengine serve`: the HTTP API and the web segment builder.

FastAPI and uvicorn are imported here, never at the command line's start-up, so every
other command starts as fast as before.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path

from ..errors import InputError, SegengineError

#: Query-string tokens never reach a log line.
TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The token from `token_file` (white space around it ignored), else $SEGENGINE_TOKEN."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise InputError(f"--token-file: {token_file} is empty: write the token into it")
        return token
    return os.environ.get("SEGENGINE_TOKEN", "").strip() or None


class HideTokens(logging.Filter):
    """Replaces a token in a logged URL (uvicorn's access log prints the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(TOKEN_IN_URL.sub(r"\1…", a) if isinstance(a, str) else a
                                for a in (record.args if isinstance(record.args, tuple) else (record.args,)))
        if isinstance(record.msg, str):
            record.msg = TOKEN_IN_URL.sub(r"\1…", record.msg)
        return True


def check_bind(host: str, token: str | None) -> None:
    if not token and not is_loopback(host):
        raise InputError(
            f"--host {host} is reachable from other machines: give a token with --token-file FILE "
            "or $SEGENGINE_TOKEN, or bind to 127.0.0.1"
        )


def serve(workspace: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, say=print) -> None:
    """Run the server until SIGINT or SIGTERM (uvicorn stops within a few seconds)."""
    check_bind(host, token)
    try:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG
    except ImportError:
        raise InputError("`segengine serve` needs FastAPI and uvicorn: "
                         "pip install 'segengine[serve]'") from None
    from .app import create_app

    app = create_app(workspace, token)
    log_config = {**LOGGING_CONFIG, "filters": {"hide_tokens": {"()": HideTokens}}}
    log_config["handlers"] = {name: {**h, "filters": ["hide_tokens"]}
                              for name, h in LOGGING_CONFIG["handlers"].items()}
    config = uvicorn.Config(app, host=host, port=port, log_config=log_config,
                            timeout_graceful_shutdown=2, server_header=False)  # SIGTERM: gone within 5 s
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {app.state.served.ws.path} on http://{shown}:{port}/"
        + (" (token required: open /?token=TOKEN)" if token else ""))
    try:
        server.run()  # uvicorn exits (status 3) when it cannot bind
    except SystemExit:
        started = False
    else:
        started = server.started
    if not started:
        raise SegengineError(f"cannot serve on {shown}:{port}: see the message above "
                             "(another server on that port? try --port)")
