"""WebDataset loader over the pipeline's shards (``contracts.shard_format``), for training and evaluation.

One ``ShardStream`` per rank, read by a ``torch`` DataLoader whose workers open the tars, shuffle,
decode (``model.samples``) and batch, so the training process only receives tensors:

- shards: a path, directory or prefix, glob, brace pattern (``runs/x/shard/{00000..00009}.tar``),
  ``::``-joined list, or URLs (``s3://``/``gs://`` through ``contracts.store``, ``http(s)://``,
  ``pipe:cmd``), local or remote alike (``model.shard_list``);
- each epoch the shard order is reshuffled from ``(seed, epoch)``, identical on every rank, then dealt
  to the ranks x DataLoader workers balanced by the sample counts of the shards' Parquet indexes;
  a sample shuffle buffer follows (webdataset's ``shuffle``, seeded per rank, worker, epoch and pass);
- ``resampled``: every worker draws shards with replacement from weighted sources instead;
- each rank yields exactly ``batches_per_epoch`` micro-batches (webdataset's ``with_epoch``), so DDP
  ranks never wait on one another at an epoch's end; a worker that runs out of shards starts again;
- a sample that fails to decode is skipped and counted (``bad``), one without the requested
  modalities or text is skipped and counted (``filtered``); neither stops the run, but a whole pass
  over a worker's shards without one usable sample does (``NoUsableSamples``): repeating the pass
  could never fill the epoch's batches, and the stream would spin forever (resampled draws have no
  pass: there it stops once every shard has been read through and each sample read was unusable);
- every batch says which worker made it and how many samples that worker has read this epoch, which
  makes the data position of a checkpoint exact (``resume``): augmentation and text choices are
  seeded per sample from ``(seed, epoch, key)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from contracts.shard_format import frames_of  # noqa: F401 (tests/test_eval's import)
from model.samples import FRAME_MODALITY, collate, decode_sample
from model.shard_list import (  # noqa: F401 (the trainer's and eval's imports)
    Split,
    assign_shards,
    count_samples,
    expand_shards,
    in_holdout,
    keep_key,
    open_shard,
    shard_counts,
)
from model.text_choice import TEXT_FIELDS, NoText

log = logging.getLogger(__name__)

MAX_WARNINGS = 5  # per worker and epoch: the count keeps going, the log does not


class NoUsableSamples(RuntimeError):
    """A training worker read a whole pass over its shards and could use none of the samples."""


class _Tally:
    """What one worker did with the samples it read this epoch. ``bad`` and ``filtered`` travel in the
    batches' stats; ``used`` and ``skipped`` (before decoding, on resume) tell a pass that found no
    usable sample; ``first_reason`` says why, in the error."""

    def __init__(self) -> None:
        self.bad = self.filtered = self.used = self.skipped = 0
        self.first_reason: str | None = None
        self.watch: _Watch | None = None  # resampled mode only

    def usable(self) -> None:
        self.watch = None  # a usable sample: the stream can fill batches; stop watching, forget

    def unusable(self, sample: dict[str, Any]) -> None:
        if self.watch is not None:
            self.watch.unusable(sample)

    def counts(self) -> dict[str, int]:
        return {"bad": self.bad, "filtered": self.filtered}

    def bad_data(self, what: str, e: Exception) -> None:
        self.bad += 1
        reason = f"{what}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}"
        self.first_reason = self.first_reason or reason
        if self.bad <= MAX_WARNINGS:
            log.warning("skipping %s", reason)


class Source(BaseModel):
    """One weighted source of shards for resampled mode."""

    model_config = ConfigDict(extra="forbid")
    shards: str | list[str]
    weight: float = Field(1.0, gt=0)


class DataConfig(BaseModel):
    """Where the shards are and how they become batches."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    shards: str | list[str] = Field("runs/demo/shard", description="path, dir, glob, brace pattern or URLs")
    modalities: list[str] = Field(default_factory=lambda: ["video"], description="towers to train")
    text_field: str = Field("raw", description=f"one of {TEXT_FIELDS}")
    mix: dict[str, float] | None = Field(
        None, description="weights for text_field=mix (LanguageBind's if null)"
    )
    batch_size: int = Field(32, ge=1, description="micro-batch per rank")
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    prefetch: int = Field(4, ge=1, description="batches each worker keeps ready")
    shuffle_buffer: int = Field(1000, ge=0, description="samples; 0 keeps shard order")
    shard_shuffle: bool = True
    resampled: bool = Field(False, description="draw shards with replacement from `sources`")
    sources: list[Source] = Field(default_factory=list, description="weighted shard sets (resampled)")
    epoch_samples: int | None = Field(
        None, ge=1, description="samples per epoch; null: count the shard indexes"
    )
    augment: bool = Field(True, description="random crop and flip (off where direction matters)")
    holdout: float = Field(0.0, ge=0, lt=1, description="fraction of video ids held out for evaluation")
    split_seed: int = 0

    @field_validator("modalities")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in (*FRAME_MODALITY, "audio")]
        if bad or not v:
            raise ValueError(f"unknown modalities {bad}; choose from video, audio, depth, infrared")
        return v

    @field_validator("text_field")
    @classmethod
    def _field(cls, v: str) -> str:
        if v not in TEXT_FIELDS:
            raise ValueError(f"unknown text field {v!r}; choose from {list(TEXT_FIELDS)}")
        return v


class _Watch:
    """Resampled mode's test for a stream that can never fill a batch. Draws never end, so there is no
    pass to count; instead, until the first usable sample (then it is dropped), it records which
    shards have been read to their end and which samples of them the consumer found unusable. Once every
    shard has been read through at least once and every distinct sample read has been handled unusable,
    more draws can only repeat them (a shard's contents do not change), and ``exhausted`` is called."""

    def __init__(self, shards: list[str], exhausted: Any) -> None:
        self.shards, self.exhausted = set(shards), exhausted
        self.read: set[str] = set()
        self.pending: set[tuple[str, str]] = set()  # read, not yet handled (in the shuffle buffer)
        self.handled: set[tuple[str, str]] = set()

    def emitted(self, sample: dict[str, Any]) -> None:
        key = (sample["__url__"], sample["__key__"])
        if key not in self.handled:
            self.pending.add(key)

    def read_to_end(self, url: str) -> None:
        self.read.add(url)
        self._check()

    def unusable(self, sample: dict[str, Any]) -> None:
        key = (sample["__url__"], sample["__key__"])
        self.pending.discard(key)
        self.handled.add(key)
        self._check()

    def _check(self) -> None:
        if not self.pending and self.read >= self.shards:
            self.exhausted()


# -- the stream -------------------------------------------------------------------------------
class ShardStream(IterableDataset):
    """Batches of one rank for one epoch; see the module docstring. ``set_position`` before iterating."""

    def __init__(
        self,
        cfg: DataConfig,
        sizes: dict[str, dict[str, Any]],
        *,
        train: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: Split = "train",
        batches_per_epoch: int | None = None,
        label_field: str | None = None,
    ) -> None:
        self.cfg, self.sizes, self.train, self.seed = cfg, sizes, train, seed
        self.label_field = label_field
        self.rank, self.world_size, self.split = rank, world_size, split
        self.sources = [(expand_shards(s.shards), s.weight) for s in cfg.sources] if cfg.resampled else []
        if cfg.resampled and not self.sources:
            self.sources = [(expand_shards(cfg.shards), 1.0)]
        self.urls = [u for urls, _ in self.sources for u in urls] or expand_shards(cfg.shards)
        self.workers = cfg.workers if train else max(0, min(cfg.workers, len(self.urls)))
        self.counts = self._shard_samples() if train and not cfg.resampled else None
        self.batches_per_epoch = batches_per_epoch
        if train and batches_per_epoch is None:
            raise ValueError("a training stream needs batches_per_epoch (see count_samples)")
        readers = world_size * max(1, self.workers)
        if train and not cfg.resampled and len(self.urls) < readers:
            raise ValueError(
                f"{len(self.urls)} shards cannot feed {world_size} ranks x {max(1, self.workers)} loader workers "
                f"= {readers} readers (each reads whole shards); lower data.workers, write more, smaller shards "
                f"(shard.samples_per_shard), or set data.resampled=true"
            )
        self.set_position(0)

    def _shard_samples(self) -> dict[str, int] | None:
        try:
            return shard_counts(
                self.urls, self.cfg.modalities, self.split, self.cfg.holdout, self.cfg.split_seed
            )
        except FileNotFoundError:  # shards without indexes (data.epoch_samples set): deal them evenly
            return None

    def set_position(self, epoch: int, batches: int = 0, read: dict[int, int] | None = None) -> None:
        """Start at ``epoch`` after ``batches`` micro-batches, worker ``w`` having read ``read[w]`` samples
        (undecoded, as the tars hold them; a batch's ``stats["read"]``)."""
        self.epoch, self.start_batch, self.read = epoch, batches, dict(read or {})

    # Shard order for one pass: identical on every rank (seeded by epoch and pass only), then dealt.
    def _pass_shards(self, worker: int, workers: int, pass_index: int) -> list[str]:
        urls = list(self.urls)
        if self.train and self.cfg.shard_shuffle:
            random.Random(f"{self.seed}:{self.epoch}:{pass_index}").shuffle(urls)
        if self.train and self.counts:
            return assign_shards(urls, self.counts, self.world_size * workers)[
                worker * self.world_size + self.rank
            ]
        if self.train:
            urls = urls[self.rank :: self.world_size]
        return urls[worker::workers]

    def _passes(self, worker: int, workers: int) -> Iterator[list[str] | Iterator[str]]:
        """Shard lists, one per pass over this worker's shards (training repeats; resampled never ends)."""
        if self.cfg.resampled:
            rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
            weights = [w for _, w in self.sources]
            yield (rng.choice(rng.choices(self.sources, weights)[0][0]) for _ in iter(int, 1))
            return
        pass_index = 0
        while True:
            yield self._pass_shards(worker, workers, pass_index)
            if not self.train:
                return
            pass_index += 1

    def _samples(self, worker: int, workers: int, tally: _Tally) -> Iterator[dict[str, Any]]:
        """Samples of this worker, shuffled within each pass, so that an epoch of balanced shards holds
        every sample once. A training pass that read nothing usable raises ``NoUsableSamples``."""

        def handler(exn: Exception) -> bool:
            tally.bad_data("unreadable shard data", exn)
            return True

        for pass_index, urls in enumerate(self._passes(worker, workers)):
            if self.cfg.resampled:  # draws never end, so no pass ends: a watch tells an unusable stream
                tally.watch = _Watch(
                    self.urls, lambda: self._nothing_usable(sorted(self.urls), worker, tally)
                )
            samples = self._read(urls, handler, tally.watch)
            if self.train and self.cfg.shuffle_buffer > 1:
                rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}:{pass_index}")
                buffer = self.cfg.shuffle_buffer
                samples = wds.shuffle(buffer, min(100, buffer), rng=rng)(samples)
            used, skipped = tally.used, tally.skipped
            yield from samples  # the consumer has handled each sample when the pass ends
            if tally.used == used and tally.skipped == skipped:
                self._nothing_usable(urls, worker, tally)
                return

    def _read(self, urls: Any, handler: Any, watch: _Watch | None) -> Iterator[dict[str, Any]]:
        """The samples of this split in ``urls``' shards, in order; with a watch (resampled), shard by shard,
        so that it knows when a shard has been read to its end."""
        kept = lambda s: keep_key(s["__key__"], self.split, self.cfg.holdout, self.cfg.split_seed)  # noqa: E731
        if watch is None:
            streams = ({"url": u, "stream": self._open(u, handler)} for u in urls)
            files = tar_file_expander((s for s in streams if s["stream"] is not None), handler=handler)
            yield from (s for s in group_by_keys(files, handler=handler) if kept(s))
            return
        for url in urls:
            if (stream := self._open(url, handler)) is not None:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
                for sample in filter(kept, group_by_keys(files, handler=handler)):
                    watch.emitted(sample)
                    yield sample
            watch.read_to_end(url)

    def _nothing_usable(self, urls: list[str] | Iterator[str], worker: int, tally: _Tally) -> None:
        """A pass without one usable sample: an evaluation pass ends; a training pass, which would be
        repeated until the epoch's batches are made, raises instead of spinning forever."""
        shards = urls if isinstance(urls, list) else []
        if not self.train:
            log.error("no usable sample in this worker's shards %s", shards)
            return
        shown = ", ".join(shards[:5]) + (f" and {len(shards) - 5} more" if len(shards) > 5 else "")
        raise NoUsableSamples(
            f"rank {self.rank}, loader worker {worker}: a whole pass over its shards ({shown or 'none'}) gave no usable sample "
            f"({tally.bad} bad, {tally.filtered} filtered without the text field or modalities asked for); "
            f"first reason: {tally.first_reason or 'the shards hold no sample of this split'}. "
            "Check the samples the warnings above name, and data.text_field / data.modalities"
        )

    @staticmethod
    def _open(url: str, handler: Any) -> Any:
        try:
            return open_shard(url)
        except Exception as e:  # a missing or unreachable shard is skipped like a bad sample
            handler(RuntimeError(f"{url}: {e}"))
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        # After a resume the DataLoader asks physical worker 0 first; it plays the worker whose turn it is.
        worker = ((info.id if info else 0) + self.start_batch) % workers
        tally = _Tally()
        samples = self._samples(worker, workers, tally)
        quota = None
        if self.batches_per_epoch is not None:  # this worker's turns in [start_batch, batches_per_epoch)
            turns = lambda n: max(0, (n - worker + workers - 1) // workers)  # noqa: E731
            quota = turns(self.batches_per_epoch) - turns(self.start_batch)
            if quota <= 0:
                return
        read, skip, items, made, reported = 0, self.read.get(worker, 0), [], 0, tally.counts()
        started = time.perf_counter()
        for sample in samples:
            read += 1
            if read <= skip:  # already trained on before the checkpoint: skip before decoding
                tally.skipped += 1
                tally.usable()
                continue
            try:
                item = decode_sample(
                    sample,
                    self.sizes,
                    modalities=self.cfg.modalities,
                    text_field=self.cfg.text_field,
                    mix=self.cfg.mix,
                    train=self.train,
                    augment=self.train and self.cfg.augment,
                    seed=self.seed,
                    epoch=self.epoch,
                    label_field=self.label_field,
                )
            except NoText as e:
                tally.filtered += 1
                tally.first_reason = tally.first_reason or f"filtered {e}"
                log.debug("filtered %s", e)
                tally.unusable(sample)
                continue
            except Exception as e:
                tally.bad_data(f"bad sample {sample.get('__key__')}", e)
                tally.unusable(sample)
                continue
            tally.used += 1
            tally.usable()
            items.append(item)
            if len(items) == self.cfg.batch_size:
                yield self._finish(items, worker, read, tally, reported, started)
                items, made, started = [], made + 1, time.perf_counter()
                if quota is not None and made >= quota:
                    return
        if not self.train and (items or tally.counts() != reported):  # the last counts travel anyway
            yield self._finish(items, worker, read, tally, reported, started)

    def _finish(
        self,
        items: list[dict[str, Any]],
        worker: int,
        read: int,
        tally: _Tally,
        reported: dict[str, int],
        started: float,
    ) -> dict[str, Any]:
        batch = collate(items, self.cfg.modalities, self.sizes)
        # Deltas since this worker's previous batch, so the trainer can sum them over workers.
        counts = tally.counts()
        batch["stats"] = {
            "worker": worker,
            "read": read,
            "decode_s": time.perf_counter() - started,
            **{k: counts[k] - reported[k] for k in counts},
        }
        reported.update(counts)
        return batch


def make_loader(stream: ShardStream, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream`` (batches come ready-made from its workers)."""
    workers = stream.workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=stream.cfg.prefetch if workers else None,
        pin_memory=pin_memory,
        persistent_workers=False,  # a new epoch re-sends the stream with its new position
        generator=torch.Generator().manual_seed(stream.seed),  # keeps the global RNG untouched
    )


def tower_sizes(model_config: Any) -> dict[str, dict[str, Any]]:
    """Per-modality ``preprocess`` arguments from a ``ModelConfig``: image size (audio: its grid), frames.

    With ``preprocess: languagebind`` (a released tower, or a model fine-tuned from one) the loader
    runs the official processors with the tower's own settings, so fine-tuning sees the inputs the
    release was trained on.
    """
    official = getattr(model_config, "preprocess", "vidal") == "languagebind"
    out = {}
    for m, tower in model_config.modalities.items():
        size = tuple(tower.image_size) if m == "audio" else tower.image_size[0]
        out[m] = {"image_size": size, "num_frames": tower.num_frames}
        if official:
            out[m].update(mode="languagebind", tower=tower)
    return out
