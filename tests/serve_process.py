"""A real ``gateway serve`` process on a free port (replica, reload and shutdown tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.cli.localmodel import free_port
from gateway.policy.model import Policy
from tests.conftest import PROVIDER_KEYS


def write_policy(path: Path, policy: Policy | dict[str, Any]) -> None:
    data = policy.model_dump() if isinstance(policy, Policy) else policy
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


class GatewayProcess:
    """``python -m gateway serve --config FILE --port P`` with extra ``GATEWAY_*`` variables."""

    def __init__(self, config: Path, log: Path, **env: str) -> None:
        self.config = config
        self.log_path = log
        self.env = env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def start(self, timeout_s: float = 45.0) -> None:
        env = {**os.environ, **PROVIDER_KEYS, "GATEWAY_LOG_LEVEL": "INFO", **self.env}
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            # Popen returns at once; the process is signalled and reaped by pid, outside the loop.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [*command, "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited at start:\n{self.log()}")
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"gateway did not start:\n{self.log()}")
                await asyncio.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (code := self.process.poll()) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the gateway did not exit")
            await asyncio.sleep(0.05)
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
