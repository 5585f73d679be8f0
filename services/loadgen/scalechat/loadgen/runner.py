"""The parent process of one shard: starts workers, runs stages in lockstep, writes results.

Per stage the parent plans the rooms (:mod:`scalechat.loadgen.plan`), sends
each worker its rooms, waits until every worker has connected, then gives
one start time ``t0`` on the system-wide monotonic clock so that all workers
warm up, measure and drain together. Workers report snapshots about once a
second (the progress line) and a final :class:`StageResult` each; the shard's
result is their exact merge.

Files (see :mod:`scalechat.results`) are rewritten atomically after every
stage, so a killed run still leaves parseable ``run.json`` and shard files;
with ``redis`` the shard's results also go to Redis
(:mod:`scalechat.results_store`) after every stage.

Ctrl+C (SIGINT to this process): workers stop sending, drain for
``drainSeconds``, close every socket with 1000 and report; the files are then
written with ``"interrupted": true``. A second Ctrl+C skips the drain and
waits at most :data:`ABORT_WAIT` seconds for workers, then uses their last
snapshots. Workers ignore SIGINT themselves.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from scalechat.hostinfo import host_facts
from scalechat.loadgen.capacity import StageSource
from scalechat.loadgen.plan import StagePlan, assign_workers, plan_stage
from scalechat.loadgen.progress import ProgressDisplay
from scalechat.loadgen.worker import worker_main
from scalechat.loadtest.spec import LoadTest
from scalechat.results import FORMAT, StageResult, write_json_atomic, write_shard

START_DELAY = 0.2  # seconds from "go" to t0: every worker gets the message first
ABORT_WAIT = 5.0
WORKER_START_TIMEOUT = 60.0


def info_url(template: str) -> str:
    """``http://host:port/info`` of a ``ws://host:port/...{room}`` template."""
    parts = urlsplit(template.replace("{room}", "x"))
    return f"http://{parts.netloc}/info"


def fetch_server_info(template: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(info_url(template), timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def events_file_name(shard: int, shards: int, worker: int) -> str:
    return f"events-shard-{shard}-of-{shards}-w{worker}.csv"


class RedisSink:
    """Also store the shard's results (and the stage it runs) in Redis, for pods without a shared disk.

    See :mod:`scalechat.results_store`. Progress writes that fail only warn;
    a failed write of the final results raises (the run's results would be lost).
    """

    def __init__(self, url: str, key: str, shard: int, shards: int, warn) -> None:
        from scalechat import results_store  # imports redis: only when asked for

        self.store, self.url, self.key, self.shard, self.shards, self.warn = results_store, url, key, shard, shards, warn

    def stage_started(self, index: int, name: str) -> None:
        try:
            self.store.set_progress(self.url, self.key, self.shard, index, name)
        except Exception as exc:  # redis errors, timeouts: the run goes on
            self.warn(f"cannot record progress in Redis {self.url}: {exc}")

    def write(self, stages: list[StageResult], final: bool) -> None:
        try:
            self.store.store_shard(self.url, self.key, self.shard, self.shards, stages)
        except Exception as exc:
            if final:
                raise OSError(f"cannot store the results in Redis {self.url} key {self.key}: {exc}") from exc
            self.warn(f"cannot store partial results in Redis {self.url}: {exc}")


@dataclass
class RunReport:
    stages: list[StageResult] = field(default_factory=list)
    interrupted: bool = False
    capacity: dict[str, Any] | None = None
    out_dir: Path = Path(".")
    planned: list = field(default_factory=list)  # the StageSpec each result ran, by index


class _WorkerHandle:
    def __init__(self, index: int, process: multiprocessing.Process, conn) -> None:
        self.index, self.process, self.conn = index, process, conn
        self.alive = True
        self.snapshot: tuple[dict[str, Any], dict[str, int]] | None = None
        self.phase = "idle"
        self.connected = False
        self.final: dict[str, Any] | None = None

    def send(self, message: tuple) -> None:
        if self.alive:
            try:
                self.conn.send(message)
            except (BrokenPipeError, OSError):
                self.alive = False


class Runner:
    def __init__(self, test: LoadTest, source: StageSource, *, shard: int, shards: int, workers: int,
                 run_id: str, out_dir: Path, stream: TextIO = sys.stderr, argv: list[str] | None = None,
                 redis: tuple[str, str] | None = None) -> None:
        self.test, self.source = test, source
        self.shard, self.shards, self.n_workers = shard, shards, workers
        self.run_id, self.out_dir, self.argv = run_id, Path(out_dir), argv
        self.progress = ProgressDisplay(stream)
        self.interrupts = 0
        self._handled_interrupts = 0
        self.workers: list[_WorkerHandle] = []
        self.plans: list[StagePlan] = []
        self.report = RunReport(out_dir=self.out_dir)
        self.started_at = time.time()
        self.server_info: dict[str, Any] | None = None
        self.sink = RedisSink(*redis, shard, shards, self.progress.message) if redis else None

    # ---- lifecycle

    def run(self) -> RunReport:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.server_info = fetch_server_info(self.test.url)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._start_workers()
            self._write(final=False)
            last: StageResult | None = None
            while not self.interrupts:
                stage = self.source.next_stage(last)
                if stage is None:
                    break
                last = self._run_stage(len(self.report.stages), stage)
                self.report.stages.append(last)
                self._write(final=False)
        finally:
            self.report.interrupted = self.interrupts > 0
            self.report.capacity = self.source.report()
            self.report.planned = [p.stage for p in self.plans]
            self._stop_workers()
            self._write(final=True)
            self.progress.end_line()
            signal.signal(signal.SIGINT, previous)
        return self.report

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupts += 1

    def _start_workers(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        # Children inherit an ignored SIGINT through exec, so Ctrl+C never reaches
        # them, even before worker_main sets SIG_IGN itself.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for k in range(self.n_workers):
                parent_conn, child_conn = ctx.Pipe()
                events = (str(self.out_dir / events_file_name(self.shard, self.shards, k))
                          if self.test.events == "csv" else None)
                process = ctx.Process(target=worker_main, args=(child_conn, k, events),
                                      name=f"loadgen-worker-{k}", daemon=True)
                process.start()
                child_conn.close()
                self.workers.append(_WorkerHandle(k, process, parent_conn))
        finally:
            signal.signal(signal.SIGINT, handler)

    def _stop_workers(self) -> None:
        for w in self.workers:
            w.send(("abort",) if self.interrupts > 1 else ("exit",))
            w.send(("exit",))
        deadline = time.monotonic() + (ABORT_WAIT if self.interrupts > 1 else 15.0)
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(2.0)
            w.conn.close()

    # ---- one stage

    def _run_stage(self, index: int, stage) -> StageResult:
        plan = plan_stage(self.run_id, index, stage, self.shards)
        self.plans.append(plan)
        mine = plan.for_shard(self.shard)
        per_worker = assign_workers(mine, len(self.workers))
        total = sum(r.clients for r in mine) or 1
        total_stages = self.source.total() if hasattr(self.source, "total") else None
        label = f"{index + 1}/{total_stages or '?'} {stage.name}"
        for w, rooms in zip(self.workers, per_worker):
            w.connected, w.final, w.snapshot, w.phase = False, None, None, "connecting"
            share = sum(r.clients for r in rooms) / total
            w.send(("connect", index, stage, rooms, self.test.url,
                    max(self.test.connect_rate * share, 1e-3), self.test.drain_seconds))
        self.progress.stage_started()
        if self.sink is not None:
            self.sink.stage_started(index, stage.name)
        self.progress.message(f"stage {index + 1} {stage.name}: {stage.rooms} room(s), "
                              f"{len(mine)} in this shard, {sum(r.clients for r in mine)} client(s), "
                              f"rate {stage.rate:g}/s, {stage.duration_seconds:g}s")
        self._wait(label, lambda w: w.connected or w.final is not None)
        if not self.interrupts:
            t0 = time.monotonic_ns() + int(START_DELAY * 1e9)
            for w in self.workers:
                w.send(("go", index, t0))
        self._wait(label, lambda w: w.final is not None)
        merged = self._merge(index, stage.name)
        self.progress.stage_finished(label, merged, sum(r.clients for r in mine))
        return merged

    def _wait(self, label: str, ready) -> None:
        """Pump worker messages until ``ready(worker)`` for every live worker."""
        abort_deadline = None
        while True:
            live = [w for w in self.workers if w.alive]
            if all(ready(w) for w in live):
                return
            if self.interrupts != self._handled_interrupts:
                self._handled_interrupts = self.interrupts
                kind = "stop" if self.interrupts == 1 else "abort"
                self.progress.message("interrupted: stopping, draining and closing connections (Ctrl+C again "
                                      "to skip the drain)" if kind == "stop" else "aborting: closing connections")
                for w in live:
                    w.send((kind,))
                if kind == "abort":
                    abort_deadline = time.monotonic() + ABORT_WAIT
            if abort_deadline is not None and time.monotonic() > abort_deadline:
                return
            for conn in wait([w.conn for w in live], timeout=0.25):
                self._receive(next(w for w in live if w.conn is conn))
            phases = {w.phase for w in live}
            snaps = [(w.index, *w.snapshot) for w in live if w.snapshot is not None]
            if snaps:
                self.progress.update(label, "/".join(sorted(phases)), snaps)

    def _receive(self, w: _WorkerHandle) -> None:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            w.alive = False
            self.progress.message(f"worker {w.index} exited unexpectedly (exit code {w.process.exitcode})")
            return
        kind = message[0]
        if kind == "snap":
            _, _, w.phase, result, live = message
            w.snapshot = (result, live)
        elif kind == "connected":
            w.connected, w.phase = True, "connected"
        elif kind == "done":
            w.final, w.phase = message[2], "done"
            w.snapshot = (message[2], message[3])

    def _merge(self, index: int, name: str) -> StageResult:
        merged = StageResult(index, name)
        for w in self.workers:
            data = w.final or (w.snapshot[0] if w.snapshot else None)
            if data is not None:
                merged.merge(StageResult.from_dict(data))
            if w.final is None:
                merged.errors["worker_unfinished"] += 1
        return merged

    # ---- files

    def _write(self, final: bool) -> None:
        write_shard(self.out_dir, self.shard, self.shards, self.report.stages)
        test = self.test
        run = {
            "format": FORMAT,
            "run_id": self.run_id,
            "spec": test.to_spec() | {"parallelism": self.shards},
            "metadata": dict(test.metadata),
            "stages": [p.stage.to_spec() for p in self.plans],
            "plan": [p.summary() for p in self.plans],
            "generator": host_facts(),
            "server": self.server_info,
            "shards": self.shards,
            "workers": len(self.workers),
            "started_at": self.started_at,
            "finished_at": time.time() if final else None,
            "interrupted": self.report.interrupted if final else False,
            "capacity": self.report.capacity if final else None,
            "argv": self.argv,
        }
        write_json_atomic(self.out_dir / "run.json", run)
        if self.sink is not None:  # last: the local files are complete whatever Redis does
            self.sink.write(self.report.stages, final)
