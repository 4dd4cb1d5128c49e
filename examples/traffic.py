"""Drive requests at productpage and count which reviews version answered each one.

The live line is the demo's whole output, so it is built here from plain counters:
one `Counter` per second, a total, and the last second on its own so that a change of
weights (`remora apply`) shows up on the very next line instead of being averaged away.
Weighted routing is exact over every window, so even 10 requests split as asked.
"""
from __future__ import annotations

import asyncio
from collections import Counter, deque

import aiohttp

VERSIONS = ("v1", "v2", "v3")
WINDOW_SECONDS = 1
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5)


class SplitStats:
    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self.current: Counter[str] = Counter()
        self.recent: deque[Counter[str]] = deque(maxlen=WINDOW_SECONDS)
        self.errors = 0
        self.first_error: str | None = None

    def record(self, version: str | None, error: str | None) -> None:
        if error is not None:
            self.errors += 1
            self.first_error = self.first_error or error
            return
        self.total[version] += 1
        self.current[version] += 1

    def roll(self) -> None:
        """Close the current second: it joins the recent window."""
        self.recent.append(self.current)
        self.current = Counter()

    def line(self, elapsed: int) -> str:
        window = sum(self.recent, Counter())
        return (
            f"[{elapsed:3d}s] reviews split {format_split(self.total, with_counts=True)}"
            f"  errors {self.errors}"
            f"  | last {len(self.recent)}s {format_split(window, with_counts=False)}"
        )


def format_split(counts: Counter[str], *, with_counts: bool) -> str:
    """` v1  51% (51)  v2  29% (29)  v3  20% (20)`; `-%` before anything was counted."""
    n = sum(counts.values())
    parts = []
    for v in VERSIONS:
        pct = f"{100 * counts[v] / n:3.0f}%" if n else "  -%"
        parts.append(f" {v} {pct}" + (f" ({counts[v]})" if with_counts else ""))
    return " ".join(parts)


async def fetch_version(session: aiohttp.ClientSession, url: str, headers=None) -> tuple[str | None, str | None]:
    """One request to productpage's API: (reviews version, None) or (None, error text)."""
    try:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 200:
                return None, f"HTTP {resp.status}: {(await resp.text())[:200].strip()}"
            body = await resp.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if body.get("error"):
        return None, body["error"]
    if body.get("reviews_version") not in VERSIONS:
        return None, f"unexpected answer {body!r}"
    return body["reviews_version"], None


async def drive(session: aiohttp.ClientSession, url: str, rate: float, stats: SplitStats) -> None:
    """Send `rate` requests/s until cancelled, on a fixed schedule.

    One task per request so a slow answer does not delay the next send: the rate stays what
    was asked and latency problems show up as errors (timeouts), not as a quieter demo.
    """
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()

    async def one() -> None:
        stats.record(*await fetch_version(session, url))

    next_send = loop.time()
    try:
        while True:
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_send += 1 / rate
            await asyncio.sleep(max(0.0, next_send - loop.time()))
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
