"""A local HTTP server standing in for the datasets' published homes: tests point ``$CIFAR_LAB_MIRROR`` at it."""

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class CuttingHandler(SimpleHTTPRequestHandler):
    """Serves a folder; a file named in ``cut`` announces its full length but sends only that many bytes, as a
    connection that drops mid-download does."""

    def __init__(self, *args, cut: dict[str, int], **kwargs) -> None:
        self.cut = cut
        super().__init__(*args, **kwargs)

    def copyfile(self, source, outputfile) -> None:
        limit = self.cut.get(Path(self.path).name)
        if limit is None:
            super().copyfile(source, outputfile)
        else:
            outputfile.write(source.read(limit))
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (quiet test output)
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that stops reading a cut file is what the tests do on purpose


@contextmanager
def serving(folder: Path, cut: dict[str, int] | None = None) -> Iterator[str]:
    """The base URL of ``folder`` served on 127.0.0.1 until the block ends."""
    handler = functools.partial(CuttingHandler, directory=str(folder), cut=cut or {})
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
