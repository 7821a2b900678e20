"""One HTTP/1.1 response as llhttp (``httptools``) parses it, its body bounded: the parser's
callbacks and what they learn, shared by the prober's wire (``supervise/probewire.py``) and the
CLI's one-shot call to the daemon (``service/httpcall.py``).

Kept free of asyncio and the rest of the daemon: the CLI imports it and must start fast.
"""

from __future__ import annotations

import httptools


class ReplyError(ValueError):
    """The bytes are not an HTTP response, or its body is larger than allowed."""


class HttpReply:
    """Feed it the bytes of one response; it fills ``status``, ``body`` and the framing flags."""

    __slots__ = ("body", "complete", "framed", "headers_done", "keep", "limit", "parser", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.status = 0
        self.headers_done = self.complete = self.framed = self.keep = False

    def feed(self, data: bytes) -> None:
        """Parse the next bytes; ReplyError if they are not HTTP or the body outgrows
        ``limit``."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # a callback's own error (the limit) comes wrapped
            raise (cause if isinstance(cause, ReplyError) else ReplyError("not HTTP")) from None

    def whole_at_close(self) -> bool:
        """Whether the peer closing now leaves a whole response: one already complete, or one
        whose body is delimited by the close (neither a length nor chunks announced)."""
        return self.complete or (self.headers_done and not self.framed)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.limit:
            raise ReplyError(f"body larger than {self.limit} bytes")

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep = self.parser.should_keep_alive()  # only known inside this callback
