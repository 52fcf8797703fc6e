"""What both HTTP servers (``alignkit serve``, ``alignkit annotate serve``) add to uvicorn: a
deadline for a request's headers. uvicorn times out an idle connection only after a response,
so a client that connects and never completes its headers (slowloris) would hold its connection
for ever; here the connection is closed when the headers have not arrived ``seconds`` after it
opened or after its previous response."""

from __future__ import annotations


def h11_with_header_deadline(seconds: float) -> type:
    """uvicorn's h11 protocol class (``uvicorn.Config(http=...)``) with the header deadline."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            deadline = getattr(self, "_header_deadline", None)
            if deadline is not None:
                deadline.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            previous = getattr(self, "_header_deadline", None)
            if previous is not None:
                previous.cancel()
            self._header_deadline = self.loop.call_later(seconds, self._headers_late)

        def _headers_late(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():  # no request is being answered
                self.transport.close()

    return HeaderDeadlineH11
