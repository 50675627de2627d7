"""How ``gateway serve --local-model`` explains a llama.cpp server that died (no model needed)."""

from __future__ import annotations

import signal
import subprocess
import sys

from gateway.cli.localmodel import PORTABLE_BUILD, exit_reason


def test_a_server_killed_by_an_illegal_instruction_is_told_how_to_rebuild() -> None:
    # A real process killed by SIGILL, as a native llama.cpp build dies on its first matrix
    # product where the CPU lists AMX but the virtual machine does not enable it (seen).
    code = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    returncode = subprocess.run([sys.executable, "-c", code], check=False).returncode
    assert returncode == -signal.SIGILL
    reason = exit_reason(returncode)
    assert "SIGILL" in reason
    assert PORTABLE_BUILD in reason
    assert "-DGGML_NATIVE=OFF" in PORTABLE_BUILD


def test_other_exits_are_named_without_a_guess() -> None:
    assert exit_reason(1) == "llama_cpp.server exited with 1"
    assert exit_reason(-signal.SIGKILL) == "llama_cpp.server was killed by SIGKILL"
    assert exit_reason(-200) == "llama_cpp.server was killed by signal 200"
