"""What the token-window check costs: microseconds per ``TokenWindow.fits`` call, and the event
loop's share of it for a request.

The cache and the knowledge base ask, once per request, whether the embedder sees the whole final
user turn (``RequestContext.query_fits``). Tokenizer only, no forward pass: this prints its cost
for the texts that take each path through ``fits`` (counted whole,
settled by the word count of the beginning, settled by a probe, or counted whole because nothing
settles it early), with the bundled all-MiniLM-L6-v2 tokenizer as both backends load it (the ONNX
one from ``tokenizer.json``, torch's as a copy of sentence-transformers' fast tokenizer). Each
figure is the best of ``--repeat`` rounds (load from other processes only slows a round down).
The last column is the event loop's CPU time per check as a request makes it
(``TokenWindow.fits_off_loop``: the shortcuts on the loop, tokenising on a thread), the mean over
200 checks in a row. Run from the repository root::

    python -m bench.token_window [--repeat 7] [--torch]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import timeit
from collections.abc import Sequence

from cache.embedder import TokenWindow, bundled_model_path
from cache.onnx_embedder import token_window

PROSE = (
    "The quarterly incident review covers the outages of the payment service. During the first "
    "week the queue of settlement jobs grew faster than the workers could drain it, because a "
    "configuration change had halved the pool of database connections available to each worker. "
)
TEXTS = {
    "short question (27 chars)": "How do I reset my password?",
    "prose, 1,000 chars (fits)": (PROSE * 5)[:1000],
    "prose, 2,000 chars (over)": (PROSE * 10)[:2000],
    "prose, 100,000 chars": (PROSE * 500)[:100_000],
    "CJK, 20,000 chars, no spaces": "数据" * 10_000,
}


def per_call_us(window: TokenWindow, text: str, repeat: int) -> float:
    once = timeit.timeit(lambda: window.fits(text), number=1)
    number = max(1, int(0.2 / max(once, 1e-7)))  # ~0.2 s a round
    best = min(timeit.repeat(lambda: window.fits(text), number=number, repeat=repeat))
    return best / number * 1e6


def loop_cpu_us(window: TokenWindow, text: str, checks: int = 200) -> float:
    """The event loop thread's CPU time per ``fits_off_loop`` check (the thread's own clock:
    the tokenising thread's time is not in it)."""

    async def run() -> float:
        await window.fits_off_loop(text)  # the executor's threads start here
        started = time.thread_time()
        for _ in range(checks):
            await window.fits_off_loop(text)
        return (time.thread_time() - started) / checks * 1e6

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--torch", action="store_true", help="also sentence-transformers' copy")
    args = parser.parse_args(argv)
    windows = {"onnx": token_window(bundled_model_path())}
    if args.torch:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from cache.embedder import SentenceEmbedder

        torch_window = SentenceEmbedder().window
        assert torch_window is not None
        windows["torch"] = torch_window
    names = " ".join(f"{k:>10}" for k in windows)
    print(f"{'text':<32} {'pieces':>7} {'fits':>5} {names} {'loop, off':>10}")
    for label, text in TEXTS.items():
        first = next(iter(windows.values()))
        figures = " ".join(
            f"{per_call_us(w, text, args.repeat):>7.1f} us" for w in windows.values()
        )
        loop = f"{loop_cpu_us(first, text):>7.1f} us"
        print(f"{label:<32} {first.count(text):>7} {first.fits(text)!s:>5} {figures} {loop}")


if __name__ == "__main__":
    main()
