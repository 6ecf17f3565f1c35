"""Re-inject dead letters after a fix: `conflux replay --from DLQ_TOPIC --to TOPIC`.

A dead letter's value is `{"reason", "raw"}` and its Kafka key the original key (see
`KafkaSink`). Replay produces each `raw` text, as UTF-8 bytes, with that key to the target
topic, so the message lands on the partition it came from and the fixed pipeline decodes it
as it would have the first time. Each replayed record carries its original headers and
`replayed-from: <dlq topic>`, which the pipeline passes on to its outputs and dead letters,
and `replay-run: <id>`, by which a replay recognises a message of its own that failed again.

Delivery is at least once, as for any Conflux pipeline: the dead-letter topic's offsets are
committed in the consumer group only once the batch's records are acknowledged, so a replay
stopped half way resumes where it stopped and replays nothing twice unless it crashed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec
import polars as pl

from engine.batch import HEADER_DTYPE, HEADERS, KEY, OFFSET, PARTITION, RAW, binary_columns
from engine.connectors.kafka import KafkaSink, KafkaSource
from engine.errors import ConnectorError

REPLAYED_FROM = "replayed-from"
REPLAY_RUN = "replay-run"
# headers a dead letter gets on top of its message's own (see `KafkaSink`), and a replay's
_ADDED_HEADERS = frozenset(
    {"reason", "stage", "source.topic", "source.partition", "source.offset"}
    | {REPLAYED_FROM, REPLAY_RUN}
)


@dataclass
class Replayed:
    """What a replay did: messages produced, and dead letters left out because they failed
    again after this replay had sent them."""

    messages: int = 0
    failed_again: int = 0


class DeadLetter(msgspec.Struct, frozen=True):
    """The value of a dead letter: why it failed, and the original value as UTF-8 text."""

    reason: str
    raw: str | None


_DEAD_LETTER = msgspec.json.Decoder(DeadLetter)


class RawKafkaSink(KafkaSink):
    """A `KafkaSink` that produces each row's `_raw` bytes as they are, not its fields as JSON.

    For values a pipeline will decode later: replayed dead letters, load generators. Keys,
    partitions (the Java client's murmur2 of `_key`), `_headers`, per-partition order,
    batching (one `create_batch` per partition and size limit) and retries are the
    `KafkaSink`'s. It does not drop what a resumed checkpoint wrote before (`resume`), so it
    is not a checkpointed pipeline's sink.
    """

    async def write(self, frame: pl.DataFrame) -> None:
        """Produce the `_raw` value of each row of `frame` with its `_key` (and `_headers`);
        return once the broker acknowledged every one."""
        if not frame.height:
            return
        await self.start()
        keys = frame.get_column(KEY)
        key_columns = binary_columns(keys)
        await self._produce(
            key_columns,
            keys,
            frame.get_column(RAW),
            self._headers(frame),
            self._partitions(key_columns),
        )


def replayable(dead_letters: pl.DataFrame, dead_letter_topic: str, run: str) -> pl.DataFrame:
    """The original messages of a batch of dead letters read from `dead_letter_topic`.

    Returns `_raw` (the original value), `_key` (the original key) and `_headers`: the
    original message's own headers, then `replayed-from` and `replay-run: run`. A dead
    letter that already carries `replay-run: run` failed again after this replay sent it:
    it is left out, or a running pipeline and a running replay would pass it round forever.

    Dead letters are rare, so each is read on its own. A record that is not a dead letter
    raises ConnectorError naming its partition and offset, before anything is produced.
    """
    replay_headers = [
        {"key": REPLAYED_FROM, "value": dead_letter_topic.encode()},
        {"key": REPLAY_RUN, "value": run.encode()},
    ]
    this_run = {"key": REPLAY_RUN, "value": run.encode()}
    rows: list[tuple[bytes | None, bytes | None, list[dict[str, object]]]] = []
    letters = dead_letters.select(RAW, KEY, PARTITION, OFFSET, HEADERS).iter_rows()
    for value, key, partition, offset, headers in letters:
        if this_run in (headers or ()):
            continue
        try:
            raw = _DEAD_LETTER.decode(value or b"").raw  # a tombstone is no dead letter
        except msgspec.DecodeError as error:
            raise ConnectorError(
                f"{dead_letter_topic}[{partition}] offset {offset}: not a dead letter "
                f'(expected a JSON object {{"reason", "raw"}}): {error}'
            ) from error
        own = [pair for pair in headers or () if pair["key"] not in _ADDED_HEADERS]
        rows.append((raw.encode() if raw is not None else None, key, own + replay_headers))
    return pl.DataFrame(
        rows, schema={RAW: pl.Binary, KEY: pl.Binary, HEADERS: HEADER_DTYPE}, orient="row"
    )


async def replay(source: KafkaSource, sink: RawKafkaSink, run: str | None = None) -> Replayed:
    """Produce the original message of every dead letter `source` yields to `sink`.

    Runs until `source` ends (its `stop_when_idle_ms`) or is cancelled; closes both ends.
    `run` names this replay in the `replay-run` header (a fresh id when None).
    """
    run = run or uuid.uuid4().hex
    replayed = Replayed()
    try:
        async for dead_letters in source.batches():
            messages = replayable(dead_letters, source.topic, run)
            await sink.write(messages)
            await source.commit()
            replayed.messages += messages.height
            replayed.failed_again += dead_letters.height - messages.height
    finally:
        await sink.close()
    return replayed
