"""The Ray runner: the plan the local runner runs, on Ray actors, across a cluster.

Topology (`engine.runners.ray.worker` has the per-worker part):

    driver ──splits / polls──▶ N workers ──pieces by partition──▶ N workers ──▶ sink writer
             (this process)     head chain     (object store)      tail chain     (one actor)

- The driver enumerates a bounded source's splits (NDJSON byte ranges, Parquet row groups)
  and hands them to workers round robin; workers read and decode them in parallel. A Kafka
  source is read by the workers themselves, each from the partitions it owns.
- The head (stateless steps before the first stateful one, fused: one call per batch) cuts
  its output by `_partition` into one piece per owning worker; with one worker, or a Kafka
  source and no `key_by`, there is no shuffle and head and tail run in one call.
- Each batch's outputs, encoded by the workers, go to one sink writer actor.
- Backpressure: at most `max_in_flight` batches are between the source and the sinks; the
  driver submits the next one only when the oldest is written. No queue is unbounded.

Checkpoints are aligned barriers: every `interval_ms` the driver submits `snapshot` to every
worker and `positions` to the writer. Actors run the driver's calls in submission order, so
each one snapshots after exactly the batches submitted before the barrier, while the driver
goes on submitting; once all have answered, the driver writes the manifest (with the
position of the last split submitted before the barrier, or the workers' Kafka offsets) and
commits Kafka offsets. A run without `checkpoint` in its spec checkpoints into a temporary
directory, for recovery within the run.

Recovery: actors are restarted by Ray when they die (`max_restarts=-1`). The driver, seeing
a call fail with an actor error, lets the calls in flight end, restores every worker and the
writer from the last checkpoint (NDJSON sinks cut back, Kafka sinks drop what they wrote
after it as the run produces it again), rewinds the source and goes on: no loss, and W1's
effects stay exactly once.

Scaling: `scale(n)` (or `conflux scale NAME --workers N`) drains the batches in flight, takes
a checkpoint, stops or starts workers and restores each one's new partitions from that
checkpoint: keyed state moves with its partitions through the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayError,
    RayTaskError,
    WorkerCrashedError,
)

from engine.connectors.kafka import topic_partitions
from engine.errors import ConfigError, ConfluxError
from engine.operators.key_by import KeyBy
from engine.plan import Plan
from engine.runners.local import Progress, RunStats
from engine.runners.ray.cluster import ACTOR_ENVIRONMENT, connect
from engine.runners.ray.control import Control, control_name
from engine.runners.ray.ordering import MAX_CONCURRENCY, Fetch, Ticket
from engine.runners.ray.splits import Split, SplitPosition, splits_for
from engine.runners.ray.store import Manifest, RayCheckpointStore, StateFiles
from engine.runners.ray.worker import Worker, shuffles, split_plan
from engine.runners.ray.writer import SinkWriter
from engine.spec import KafkaSourceSpec

log = logging.getLogger(__name__)


class ActorRestarted(ConfluxError):
    """An actor was restarted (its process died) while calls of the run were in flight.

    Ray usually fails those calls, but not always: after a worker was killed, the result of
    a call submitted before the kill could stay pending for good (the benchmark's kill
    drill hung so in 1 run of 6), with the calls behind it waiting for its ticket. The driver
    checks its actors' processes whenever a wait has lasted `STALL_CHECK_S`.

    `since`: when the wait began (the recovery time counts from there).
    """

    def __init__(self, message: str, since: float) -> None:
        super().__init__(message)
        self.since = since


#: Failures of the cluster, not of the pipeline: the run recovers from a checkpoint.
_LOST = (
    ActorRestarted,
    RayActorError,
    ActorDiedError,
    ActorUnavailableError,
    ObjectLostError,
    OwnerDiedError,
    WorkerCrashedError,
)
#: Checkpoint interval when the spec names no checkpoint (recovery within the run only).
DEFAULT_INTERVAL_MS = 2000
#: How long a recovery waits for Ray to restart dead actors.
RESTART_TIMEOUT_S = 60
#: How many failures in a row (without a checkpoint in between) end the run.
MAX_RECOVERIES = 5
#: How long a wait for actors' results lasts before the driver checks that every actor is
#: still the process it configured (`ActorRestarted`).
STALL_CHECK_S = 1.0
#: How long a metrics scrape waits for the workers' Kafka lag (`RayRunner.lag`).
LAG_TIMEOUT_S = 2.0

_ACTOR = {"max_restarts": -1, "max_task_retries": 0, "max_concurrency": MAX_CONCURRENCY}
_WorkerActor = ray.remote(num_cpus=1, **_ACTOR)(Worker)
_WriterActor = ray.remote(num_cpus=0, **_ACTOR)(SinkWriter)
_ControlActor = ray.remote(num_cpus=0)(Control)


@dataclass
class _Batch:
    """A batch between source and sinks, through three phases, each submitted only once
    the one before it is done (see `_advance`):

    1. its head (`head`: a worker's pieces, one per worker; `count`: input messages), or
       with no shuffle its head and tail in one call (`outputs`);
    2. its tails (`outputs`: one per worker);
    3. its sink write (`write`).

    `position`: where a bounded source continues after it.
    """

    seq: int
    count: ray.ObjectRef
    position: SplitPosition | None
    head: list[ray.ObjectRef] = field(default_factory=list)
    outputs: list[ray.ObjectRef] = field(default_factory=list)
    write: ray.ObjectRef | None = None


@dataclass
class _Barrier:
    """A checkpoint under way: workers' snapshots, then (once the write of batch
    `last_seq` is submitted) the writer's positions."""

    number: int
    snapshots: list[ray.ObjectRef]
    split: SplitPosition | None
    last_seq: int
    sinks: ray.ObjectRef | None = None


class RayRunner:
    """Run `plan` on Ray with `workers` workers (at most the number of partitions).

    `address`: a running cluster ("auto", "ray://host:10001", ...); None starts a local
    one for this process (or uses the one `ray.init` already connected to).
    `max_in_flight`: batches between source and sinks (default: 2 per worker, plus 2).
    Sources and sinks are opened from the spec inside the actors, so the plan's spec must
    describe them (files, Kafka, inline values), not live objects.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        workers: int = 1,
        address: str | None = None,
        max_in_flight: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"Ray runner: workers must be at least 1, got {workers}")
        self.plan = plan
        self.spec = plan.spec
        self.address = address
        self.progress = progress
        self.stats = RunStats()
        self.recovery_seconds: list[float] = []
        #: Seconds from `run` to every actor started and restored (before the first batch).
        self.startup_seconds = 0.0
        self._wanted = workers
        self._max_in_flight = max_in_flight
        self._kafka = isinstance(self.spec.source, KafkaSourceSpec)
        self._shuffle = shuffles(plan)
        self._import_paths = [p for p in sys.path if p and os.path.isdir(p)]
        self._workers: list[Any] = []
        self._heading: deque[_Batch] = deque()  # phase 1
        self._tailing: deque[_Batch] = deque()  # phase 2
        self._in_flight: deque[_Batch] = deque()  # phase 3: sink write submitted
        self._barrier: _Barrier | None = None
        self._dropped: list[ray.ObjectRef] = []  # results of calls a recovery dropped
        self._seq = 0
        self._tailed_seq = -1  # the last batch whose tails (state effects) are submitted
        self._tickets: dict[int, Ticket] = {}  # id(actor handle) → its next ticket
        self._pids: list[int] = []  # the writer's and the workers' processes, configured
        self._epoch = 0  # the last epoch begun (`_new_epoch`)
        self._failures = 0
        self._recovering_since: float | None = None
        self.rescales = 0

    # ---- the API ------------------------------------------------------------------------

    def scale(self, workers: int) -> None:
        """Use `workers` workers from the next batch on (thread-safe; `run` applies it)."""
        self._wanted = workers

    def lag(self) -> dict[int, int]:
        """Each Kafka partition's lag, from the workers reading them (`KafkaSource.lag`);
        empty for other sources, and while a worker is lost (a recovery is under way).
        Thread-safe: a metrics scrape calls it while the run goes on."""
        workers = list(self._workers)
        if not self._kafka or not workers:
            return {}
        try:
            parts = ray.get([worker.lag.remote() for worker in workers], timeout=LAG_TIMEOUT_S)
        except (*_LOST, RayTaskError, GetTimeoutError):
            return {}
        return {partition: behind for part in parts for partition, behind in part.items()}

    def worker_pids(self) -> list[int]:
        """The process id of each worker actor (on its node): for operators and fault
        drills (`kill -9` one, and watch the run recover)."""
        return ray.get([worker.pid.remote() for worker in self._workers])

    def run(self) -> RunStats:
        """Run until a bounded source ends (or a Kafka source is idle for the spec's
        `stop_when_idle_ms`); returns the run's figures."""
        connect(self.address)
        wall, cpu = time.perf_counter(), time.process_time()
        temporary = None
        if self.spec.checkpoint is None:
            temporary = tempfile.mkdtemp(prefix=f"conflux-{self.spec.name}-")
            self.store, self.interval_s = RayCheckpointStore(temporary), DEFAULT_INTERVAL_MS / 1000
        else:
            self.store = RayCheckpointStore(self.spec.checkpoint.directory)
            self.interval_s = self.spec.checkpoint.interval_ms / 1000
        try:
            self.control = _ControlActor.options(name=control_name(self.spec.name)).remote()
        except ValueError as error:
            raise ConfigError(
                f"a pipeline named {self.spec.name!r} is already running on this Ray cluster"
            ) from error
        try:
            self._start()
            self.startup_seconds = time.perf_counter() - wall
            self._loop()
            self._finish()
            self._add_actor_stats()
        finally:
            self._stop()
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)
        self.stats.wall_seconds = time.perf_counter() - wall
        self.stats.cpu_seconds = time.process_time() - cpu
        return self.stats

    # ---- start, loop, end ---------------------------------------------------------------

    def _start(self) -> None:
        self.partitions = self._partition_count()
        manifest = self.store.load()
        if manifest is not None and manifest.partitions != self.partitions:
            raise ConfigError(
                f"checkpoint {manifest.number} in {self.store.location!r} has "
                f"{manifest.partitions} partitions, the pipeline now {self.partitions}: start "
                "again with an empty checkpoint directory"
            )
        count = min(self._wanted, self.partitions)
        self._wanted = count
        # actors start (a process each, importing the engine) side by side
        self.writer = _WriterActor.remote(self.spec, self._import_paths)
        self._workers = [self._new_worker(count) for _ in range(count)]
        opened = self.writer.open.remote(
            self._new_epoch(self.writer),
            self.store.sink_positions(manifest) if manifest is not None else None,
        )
        self._configure(manifest)
        ray.get(opened)
        self._next_number = self.store.next_number()
        if manifest is None:  # where every output begins, so that any failure can resume
            self._split_position = None if self._kafka else {}
            manifest = self._checkpoint_now()
        self._rewind(manifest)
        self._report()

    def _loop(self) -> None:
        checkpointed_at = time.monotonic()
        control_at, control = 0.0, None
        while True:
            try:
                if control is None and time.monotonic() - control_at >= 0.25:
                    control, control_at = self.control.take.remote(), time.monotonic()
                if control is not None and ray.wait([control], timeout=0)[0]:
                    requested, control = ray.get(control), None
                    if requested is not None:
                        self._wanted = requested
                if self._wanted != len(self._workers):
                    self._rescale(self._wanted)
                    checkpointed_at = time.monotonic()
                if self._barrier is not None:
                    self._try_complete_barrier(block=False)
                elif time.monotonic() - checkpointed_at >= self.interval_s:
                    self._start_barrier()
                    checkpointed_at = time.monotonic()
                if not self._exhausted and self._batches() < self._limit():
                    self._submit()
                elif self._batches():
                    self._advance()
                elif self._exhausted:
                    if self._barrier is not None:
                        self._try_complete_barrier(block=True)
                    return
            except (*_LOST, RayTaskError) as error:
                self._recover_or_raise(error)

    def _finish(self) -> None:
        """End of a bounded input: each step's end-of-input outputs, then a last checkpoint
        (a rerun of a Kafka pipeline continues after everything this run wrote)."""
        while True:
            try:
                outputs = [w.finish.remote(self._ticket(w)) for w in self._workers]
                seq, self._seq = self._seq, self._seq + 1
                self._tailed_seq = seq
                write = self.writer.write.remote(self._ticket(self.writer), seq, Fetch(outputs))
                self._account(seq, ray.get(self._wait([write])[0]), 0)
                if self.spec.checkpoint is not None:
                    self._checkpoint_now()
                # flush and release the sinks and sources before the actors are stopped
                actors = [self.writer, *self._workers]
                ray.get(self._wait([actor.close.remote(self._ticket(actor)) for actor in actors]))
                return
            except (*_LOST, RayTaskError) as error:
                self._recover_or_raise(error)
                self._loop()

    def _stop(self) -> None:
        self._settle_dropped()
        for actor in [*self._workers, getattr(self, "writer", None), self.control]:
            if actor is not None:
                ray.kill(actor)
        self._workers = []

    def _settle_dropped(self) -> None:
        """Read the results of the calls a recovery dropped: Ray logs an "unhandled error"
        for every failed result no one reads, and these failures (the lost actor, stale
        calls refused after the restore) were handled by the recovery."""
        if not self._dropped:
            return
        ready, _ = ray.wait(self._dropped, num_returns=len(self._dropped), timeout=10)
        for ref in ready:
            with contextlib.suppress(RayError):
                ray.get(ref)
        self._dropped = []

    # ---- batches ------------------------------------------------------------------------

    def _limit(self) -> int:
        # each batch holds at most two calls at a worker: stay within its threads
        return min(self._max_in_flight or 2 * len(self._workers) + 2, MAX_CONCURRENCY // 4)

    def _batches(self) -> int:
        return len(self._heading) + len(self._tailing) + len(self._in_flight)

    def _pending(self) -> list[ray.ObjectRef]:
        refs = [b.count for b in self._heading] + [r for b in self._tailing for r in b.outputs]
        return refs + [b.write for b in self._in_flight if b.write is not None]

    def _submit(self) -> None:
        """Start the next batch: a split or a poll (phase 1)."""
        workers = self._workers
        count = len(workers)
        seq = self._seq
        if self._kafka:
            if self._idle():
                self._exhausted = True
                return
            worker = workers[seq % count]
            if self._shuffle:
                *head, messages = worker.poll.options(num_returns=count + 1).remote(
                    self._ticket(worker), seq, True
                )
                batch = _Batch(seq, messages, None, head=head)
            else:
                output, messages = worker.poll.options(num_returns=2).remote(
                    self._ticket(worker), seq, False
                )
                batch = _Batch(seq, messages, None, outputs=[output])
        else:
            try:
                split, position = next(self._splits)
            except StopIteration:
                self._exhausted = True
                return
            if count == 1:
                output, messages = (
                    workers[0]
                    .process.options(num_returns=2)
                    .remote(self._ticket(workers[0]), split)
                )
                batch = _Batch(seq, messages, position, outputs=[output])
            else:
                worker = workers[seq % count]
                call = worker.head_split.options(num_returns=count + 1)
                *head, messages = call.remote(self._ticket(worker), seq, split)
                batch = _Batch(seq, messages, position, head=head)
        self._seq += 1
        if batch.head:
            self._heading.append(batch)
        else:  # head and tail in one call: its state effects are submitted
            self._tailing.append(batch)
            self._tailed_seq = seq
            if batch.position is not None:
                self._split_position = batch.position

    def _advance(self) -> None:
        """Move the oldest batch of some phase on, waiting until one can.

        Calls run in ticket order at each actor (`engine.runners.ray.ordering`). No call
        takes an object reference as an argument (the references of pieces and outputs
        travel inside lists, fetched by the callee), so none waits for a dependency before
        it reaches its actor; and a call is submitted only once what it fetches is ready,
        so that it never holds up the calls behind it. Within a phase, batches move in
        order.
        """
        fronts: list[tuple[deque[_Batch], list[ray.ObjectRef], Callable[[_Batch], None]]] = []
        if self._heading:
            fronts.append((self._heading, [self._heading[0].count], self._start_tails))
        if self._tailing:
            fronts.append((self._tailing, self._tailing[0].outputs, self._start_write))
        if self._in_flight:
            assert self._in_flight[0].write is not None
            fronts.append((self._in_flight, [self._in_flight[0].write], self._complete))
        pending = [ref for _, refs, _ in fronts for ref in refs]
        ready: set[ray.ObjectRef] = set()
        while True:
            found, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
            ready.update(found)
            for phase, refs, move in fronts:
                if all(ref in ready for ref in refs):
                    move(phase.popleft())
                    return
            # nothing can move yet: sleep until one more result is in (no busy wait)
            self._wait(pending, num_returns=1)

    def _start_tails(self, batch: _Batch) -> None:
        """Phase 2: every worker's tail on its piece of the batch."""
        seq, head = batch.seq, batch.head
        batch.outputs = [
            w.tail_piece.remote(self._ticket(w), seq, Fetch([head[i]]))
            for i, w in enumerate(self._workers)
        ]
        batch.head = []
        self._tailing.append(batch)
        self._tailed_seq = seq
        if batch.position is not None:
            self._split_position = batch.position

    def _start_write(self, batch: _Batch) -> None:
        """Phase 3: the batch's sink write, then the writer's barrier if it is due."""
        batch.write = self.writer.write.remote(
            self._ticket(self.writer), batch.seq, Fetch(batch.outputs)
        )
        batch.outputs = []
        self._in_flight.append(batch)
        barrier = self._barrier
        if barrier is not None and barrier.sinks is None and barrier.last_seq <= batch.seq:
            barrier.sinks = self.writer.positions.remote(
                self._ticket(self.writer), barrier.last_seq
            )

    def _complete(self, batch: _Batch) -> None:
        """Wait for a batch to be written; count it."""
        assert batch.write is not None
        rows = ray.get(batch.write)
        messages = ray.get(batch.count)
        self._account(batch.seq, rows, messages)
        if messages:
            self._last_record_at = time.monotonic()
            if self._recovering_since is not None:
                self.recovery_seconds.append(time.monotonic() - self._recovering_since)
                self._recovering_since = None

    def _account(self, seq: int, rows: dict[str, int], messages: int) -> None:
        """Count a written batch (after a recovery, replayed batches count again)."""
        self.stats.messages += messages
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()
        for sink, count in rows.items():
            self.stats.rows_out[sink] += count
        if self.progress is not None and messages:
            self.progress(messages)

    def _idle(self) -> bool:
        source = self.spec.source
        assert isinstance(source, KafkaSourceSpec)
        if source.stop_when_idle_ms is None:
            return False
        return (time.monotonic() - self._last_record_at) * 1000 >= source.stop_when_idle_ms

    # ---- checkpoints --------------------------------------------------------------------

    def _start_barrier(self) -> None:
        """Barrier calls to every worker now, after the tails submitted so far (and, polls
        advancing a Kafka source's offsets, after every poll submitted: their tails
        first); to the writer once the last of those batches' writes is submitted."""
        if self._kafka:
            while self._heading:
                self._wait([self._heading[0].count])
                self._start_tails(self._heading.popleft())
        number, self._next_number = self._next_number, self._next_number + 1
        last_seq = self._tailed_seq
        self._barrier = _Barrier(
            number,
            [w.snapshot.remote(self._ticket(w), number) for w in self._workers],
            None if self._kafka else self._split_position,
            last_seq,
        )
        if not self._tailing:  # every write up to `last_seq` is submitted
            self._barrier.sinks = self.writer.positions.remote(self._ticket(self.writer), last_seq)

    def _try_complete_barrier(self, block: bool) -> Manifest | None:
        """Commit the pending checkpoint once every actor has passed its barrier."""
        barrier = self._barrier
        assert barrier is not None
        while block and barrier.sinks is None:
            self._advance()
        if barrier.sinks is None:
            return None
        refs = [*barrier.snapshots, barrier.sinks]
        ready = self._wait(refs) if block else ray.wait(refs, num_returns=len(refs), timeout=0)[0]
        if len(ready) < len(refs):
            return None
        snapshots = ray.get(barrier.snapshots)
        sinks = ray.get(barrier.sinks)
        # the batches before the barrier are written
        while self._in_flight and self._in_flight[0].seq <= barrier.last_seq:
            self._complete(self._in_flight.popleft())
        states: dict[str, StateFiles] = {}
        offsets: dict[int, int] = {}
        for files, worker_offsets in snapshots:
            offsets.update(worker_offsets)
            for step, found in files.items():
                states[step] = _merge(states.get(step), found)
        source = self.spec.source
        manifest = self.store.commit(
            barrier.number,
            partitions=self.partitions,
            workers=len(self._workers),
            offsets={source.topic: offsets} if isinstance(source, KafkaSourceSpec) else None,
            split=barrier.split,
            sinks=sinks,
            states=states,
        )
        self._barrier = None
        self._failures = 0
        self.stats.checkpoints += 1
        if manifest.offsets is not None:
            for worker in self._workers:  # the group's offsets: for monitoring tools
                worker.commit.remote(self._ticket(worker), manifest.offsets)
        self._report()
        return manifest

    def _checkpoint_now(self) -> Manifest:
        """A checkpoint between batches (start, rescale, end): waits for it."""
        while self._batches():
            self._advance()
        if self._barrier is not None:
            self._try_complete_barrier(block=True)
        self._start_barrier()
        manifest = self._try_complete_barrier(block=True)
        assert manifest is not None
        return manifest

    # ---- failures and scaling -----------------------------------------------------------

    def _recover_or_raise(self, error: Exception) -> None:
        """Recover from a lost actor (or a call that failed because one was lost); raise
        what a worker itself raised (a ConfluxError names what was wrong)."""
        if isinstance(error, _LOST) or isinstance(getattr(error, "cause", None), _LOST):
            self._recover(error)
        else:
            raise _cause(error) from None

    def _recover(self, error: BaseException) -> None:
        """Restore every actor from the last checkpoint and rewind the source."""
        self._failures += 1
        if self._failures > MAX_RECOVERIES:
            raise ConfluxError(
                f"pipeline {self.spec.name!r}: {MAX_RECOVERIES} failures without a checkpoint "
                f"in between; the last: {error}"
            ) from error
        started = error.since if isinstance(error, ActorRestarted) else time.monotonic()
        log.warning("pipeline %s: %s; restoring the last checkpoint", self.spec.name, error)
        # calls in flight are dropped: those of the new epoch's tickets start afresh, and
        # each actor runs none of the old ones once the new epoch has begun
        for phase in (self._heading, self._tailing, self._in_flight):
            for batch in phase:
                self._dropped += [batch.count, *batch.head, *batch.outputs]
                self._dropped += [batch.write] if batch.write is not None else []
            phase.clear()
        if self._barrier is not None:
            self._dropped += self._barrier.snapshots
            self._dropped += [self._barrier.sinks] if self._barrier.sinks is not None else []
        self._barrier = None
        manifest = self.store.load()
        assert manifest is not None  # one is written before the first batch
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:  # Ray restarts the dead actors; calls fail until they are back
            try:
                positions = self.store.sink_positions(manifest)
                ray.get(self.writer.open.remote(self._new_epoch(self.writer), positions))
                self._configure(manifest)
                break
            except ActorUnavailableError as unavailable:
                if time.monotonic() > deadline:
                    raise ConfluxError(
                        f"pipeline {self.spec.name!r}: actors not back {RESTART_TIMEOUT_S} s "
                        f"after a failure: {unavailable}"
                    ) from error
                time.sleep(0.1)
        self._rewind(manifest)
        self._recovering_since = started
        self._report()

    def _rescale(self, wanted: int) -> None:
        wanted = max(1, min(wanted, self.partitions))
        self._wanted = wanted
        if wanted == len(self._workers):
            self._report()
            return
        manifest = self._checkpoint_now()
        unpartitioned = [step for step, files in manifest.states.items() if files.workers]
        if unpartitioned:
            self._wanted = len(self._workers)
            self._report(
                refused=f"steps {unpartitioned} keep state not tied to a partition: "
                "they cannot move to other workers"
            )
            return
        for worker in self._workers[wanted:]:
            ray.get(worker.close.remote(self._ticket(worker)))
            ray.kill(worker)
        self._workers = self._workers[:wanted]
        self._workers += [self._new_worker(wanted) for _ in range(wanted - len(self._workers))]
        self._configure(manifest)
        self._resplit()
        self.rescales += 1
        log.info("pipeline %s: now %d workers", self.spec.name, wanted)
        self._report()

    def _configure(self, manifest: Manifest | None) -> None:
        count, location = len(self._workers), self.store.location
        ray.get(
            [
                worker.configure.remote(
                    self._new_epoch(worker), index, count, self.partitions, location, manifest
                )
                for index, worker in enumerate(self._workers)
            ]
        )
        self._pids = self._actor_pids()

    def _actor_pids(self, timeout: float | None = None) -> list[int]:
        """The writer's and the workers' process ids."""
        actors = [self.writer, *self._workers]
        return ray.get([actor.pid.remote() for actor in actors], timeout=timeout)

    def _wait(
        self, refs: list[ray.ObjectRef], num_returns: int | None = None
    ) -> list[ray.ObjectRef]:
        """Wait until `num_returns` of `refs` (default: all) are ready; return the ready
        ones. Every `STALL_CHECK_S` of waiting, raise `ActorRestarted` if an actor's
        process is not the one configured: the results of its calls may never come."""
        wanted = len(refs) if num_returns is None else num_returns
        since = time.monotonic()
        while True:
            ready, _ = ray.wait(refs, num_returns=wanted, timeout=STALL_CHECK_S)
            if len(ready) >= wanted:
                return ready
            try:
                pids = self._actor_pids(timeout=STALL_CHECK_S)
            except GetTimeoutError:
                continue  # an actor is restarting: its pid differs once it is back
            if pids != self._pids:
                raise ActorRestarted(
                    f"pipeline {self.spec.name!r}: an actor was restarted (processes "
                    f"{self._pids} are now {pids}) while its calls were in flight",
                    since,
                )

    def _rewind(self, manifest: Manifest) -> None:
        self._exhausted = False
        self._last_record_at = time.monotonic()
        self._recovering_since = None
        self._split_position = manifest.split
        self._resplit()

    def _resplit(self) -> None:
        """Enumerate a bounded source's splits from the last split submitted, sized for
        the workers there are now (`splits_for`)."""
        if not self._kafka:
            self._splits: Iterator[tuple[Split, SplitPosition]] = splits_for(
                self.spec.source, self._split_position or None, len(self._workers)
            )

    def _ticket(self, actor: Any) -> Ticket:
        """The next ticket of `actor`'s order-sensitive calls (`engine.runners.ray.ordering`)."""
        epoch, number = self._tickets[id(actor)]
        self._tickets[id(actor)] = (epoch, number + 1)
        return epoch, number

    def _new_epoch(self, actor: Any) -> int:
        """A new epoch for `actor`'s tickets, given to its `configure` or `open`."""
        self._epoch += 1
        self._tickets[id(actor)] = (self._epoch, 0)
        return self._epoch

    def _new_worker(self, count: int) -> Any:
        """A worker actor; its polars threads share the node's cores with its `count - 1`
        fellows (oversubscribed compute threads spin: measured 5–10 % slower with 2
        workers on 2 cores). A lone worker keeps polars' default, all cores, and the
        node's environment (where `connect` and the configs in cluster/ put
        `ACTOR_ENVIRONMENT`), and so can start in one of the worker processes Ray keeps
        ready (0.3–0.6 s sooner: a `runtime_env` needs a new process)."""
        per_node = max(1, int(ray.cluster_resources().get("CPU", 1)) // max(len(ray.nodes()), 1))
        threads = max(1, per_node // count)
        options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
        if threads < per_node:
            environment = {**ACTOR_ENVIRONMENT, "POLARS_MAX_THREADS": str(threads)}
            options["runtime_env"] = {"env_vars": environment}
        return _WorkerActor.options(**options).remote(self.spec, self._import_paths)

    def _partition_count(self) -> int:
        """How many partitions keyed state is spread over: a head `key_by`'s, else the
        Kafka source topic's, else one."""
        head, _ = split_plan(self.plan)
        key_by = [step for step in head if isinstance(step, KeyBy)]
        if key_by:
            return key_by[-1].partitions
        source = self.spec.source
        if isinstance(source, KafkaSourceSpec):
            return topic_partitions(source.bootstrap, source.topic)
        return 1

    def _add_actor_stats(self) -> None:
        """The actors' time per stage (summed over workers) and CPU time per role into the
        run's figures."""
        totals: dict[str, int] = {}
        roles = ["worker"] * len(self._workers) + ["writer"]
        actors = [*self._workers, self.writer]
        for role, (stage_ns, cpu_ns) in zip(
            roles, ray.get([actor.stats.remote() for actor in actors]), strict=True
        ):
            for stage, ns in stage_ns.items():
                totals[stage] = totals.get(stage, 0) + ns
            self.stats.actor_cpu_ns[role] += cpu_ns
        self.stats.stage_ns.update(totals)

    def _report(self, refused: str | None = None) -> None:
        self.control.report.remote(
            {
                "workers": len(self._workers),
                "target": self._wanted,
                "partitions": self.partitions,
                "messages": self.stats.messages,
                "checkpoints": self.stats.checkpoints,
                "recoveries": len(self.recovery_seconds),
                "refused": refused,
            }
        )


def _merge(files: StateFiles | None, more: StateFiles) -> StateFiles:
    if files is None:
        return more
    return StateFiles(
        partitions={**files.partitions, **more.partitions},
        shared=files.shared or more.shared,
        workers={**files.workers, **more.workers},
    )


def _cause(error: Exception) -> BaseException:
    """The exception a worker raised (a ConfluxError names what was wrong), else `error`."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
