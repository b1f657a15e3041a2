#!/usr/bin/env python
"""A TCP proxy that gives every HTTP response a time to first byte, like a real S3 bucket.

    python bench/latency_proxy.py --upstream 127.0.0.1:9000 --ttfb-ms 30 [--listen 127.0.0.1:0]

moto on loopback answers in well under a millisecond; real S3 takes about 20-40 ms before the
first byte of a GET comes back, and that is what makes a replay from the bucket slow when its
round trips do not overlap. The proxy sits between a broker and moto and holds the first byte
of every response until ``ttfb`` has passed since the first byte of the request that caused it.
It knows nothing of HTTP beyond this: on each connection, client bytes arriving after a response
started (or on a fresh connection) begin a new request, and the next bytes from upstream are
its response. S3 clients send one request at a time per connection (no pipelining), so this is
exact for them; an ``Expect: 100-continue`` upload pays the delay twice (once for the interim
response), as it does against a distant bucket.

Bandwidth is not limited: only latency is added. The proxy prints ``listening HOST:PORT`` on
stdout once it accepts connections (the port is chosen when ``--listen`` ends in ``:0``). It
counts the requests it forwarded by HTTP method (the first word of each request): on
``SIGUSR1`` it writes them as JSON to ``--stats FILE``, which is how the benchmark reports the
bucket requests per GB of every broker alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from collections import Counter

BUFFER = 256 * 1024
METHODS = frozenset({"GET", "PUT", "POST", "HEAD", "DELETE"})


class LatencyProxy:
    def __init__(self, upstream: tuple[str, int], ttfb_s: float) -> None:
        self.upstream = upstream
        self.ttfb = ttfb_s
        self.responses = 0
        self.requests: Counter[str] = Counter()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        loop = asyncio.get_running_loop()
        request_at: list[float | None] = [None]  # first byte of the request awaiting a response

        async def requests() -> None:
            while data := await client_r.read(BUFFER):
                if request_at[0] is None:
                    request_at[0] = loop.time()
                    method = data[:8].split(b" ", 1)[0].decode("latin-1")
                    if method in METHODS:  # not the body of an upload after 100 Continue
                        self.requests[method] += 1
                up_w.write(data)
                await up_w.drain()
            if up_w.can_write_eof():
                up_w.write_eof()

        async def responses() -> None:
            while data := await up_r.read(BUFFER):
                started = request_at[0]
                if started is not None:
                    request_at[0] = None
                    self.responses += 1
                    delay = started + self.ttfb - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(responses())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            for w in (up_w, client_w):
                with contextlib.suppress(Exception):
                    w.close()


async def serve(
    listen: tuple[str, int], upstream: tuple[str, int], ttfb_ms: float, stats: str | None
) -> None:
    proxy = LatencyProxy(upstream, ttfb_ms / 1000)
    server = await asyncio.start_server(proxy.handle, listen[0], listen[1], backlog=256)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    loop = asyncio.get_running_loop()

    dumps = [0]

    def dump() -> None:
        if stats:
            dumps[0] += 1
            tmp = stats + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"requests": dict(proxy.requests), "responses": proxy.responses,
                           "dumps": dumps[0]}, f)
            os.replace(tmp, stats)

    loop.add_signal_handler(signal.SIGUSR1, dump)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server (moto)")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free one)")
    ap.add_argument("--ttfb-ms", type=float, default=30.0, help="time to first byte (30)")
    ap.add_argument("--stats", help="file the request counts are written to on SIGUSR1")
    args = ap.parse_args(argv)
    main_coro = serve(_hostport(args.listen), _hostport(args.upstream), args.ttfb_ms, args.stats)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)


if __name__ == "__main__":
    main()
