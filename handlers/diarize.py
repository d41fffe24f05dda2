"""The bundled engine's diarization: pyannote's ``SpeakerDiarization`` recipe on diarist's model runners.

The steps and their arithmetic are pyannote.audio 4's (MIT; ``pipelines/speaker_diarization.py``,
``core/inference.py``, ``pipelines/utils/diarization.py``), ported to numpy so that a run needs neither torch
nor pyannote.audio (their imports alone cost more than diarizing a short file) and so that the models can run
in ONNX Runtime (``handlers/bundled_models.py``). ``tests/test_diarize.py`` checks each step against
pyannote's own on the same input.

1. Segmentation: 10 s chunks every ``segmentation_step`` (1 s below 10 minutes, 2 s from there on), the last
   one zero-padded; the powerset output becomes 0/1 local speakers (3 per chunk). Chunks of digital silence
   reuse the model's answer for silence instead of running it.
2. Speaker count per frame: local speakers summed and averaged over overlapping chunks.
3. Embeddings (diarist's, formerly ``fast_pipeline.py``): CAM++'s frame features are computed once per 10 s
   block of audio (with 1 s of context either side, ``MARGIN_SECONDS``) instead of once per (chunk, local
   speaker), and pooled per local speaker with the segmentation's masks, leaving out frames where several
   people talk (``clean_masks``). Chunks where nobody speaks are skipped; inactive speakers get NaN.
4. Clustering: ``handlers/clustering.py``'s cannot-link agglomerative clustering.
5. Reconstruction: each cluster's activity summed over chunks, the top ``count`` clusters of each frame
   active; turns are the runs of active frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from diarist.handlers.audio import SAMPLE_RATE, to_float
from diarist.handlers.bundled_models import Frames, ModelFacts
from diarist.handlers.clustering import CannotLinkClustering

#: seconds of audio run on either side of each embedding block and then discarded
MARGIN_SECONDS = 1.0
#: a speaker's own (non-overlapped) speech in a chunk below this is too little for an embedding of it alone
MIN_CLEAN_SECONDS = 0.5
#: from this duration on, the coarser chunk step pays (see ``segmentation_step``)
LONG_FILE_SECONDS = 600.0
#: the clustering's minimum cluster size at pyannote's step (it counts chunks, so it scales with the step)
MIN_CLUSTER_SIZE = 12

#: hook(step, completed, total): "segmentation" and "embeddings" report as they go
Hook = Callable[[str, int, int], None]


class Models(Protocol):
    facts: ModelFacts
    device: str
    segmentation_batch: int  # chunks per segmentation run that suit this runtime

    def segment(self, chunks: np.ndarray) -> np.ndarray: ...
    def features(self, audio: np.ndarray) -> np.ndarray: ...
    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray: ...


def segmentation_step(duration: float) -> float:
    """Chunk step as a fraction of the 10 s window: 0.1 (pyannote's) below 10 minutes, 0.2 from there on.

    Segmentation costs the same per chunk whatever it contains, so on long files the step is most of the
    remaining time. Clustering needs enough chunks per speaker: a 30 s file has 21 chunks at 0.1 and only 11
    at 0.2, which measurably hurt (pyannote's sample: DER 0.052 -> 0.072); a 30-minute conversation has
    ~900 at 0.2 and clustered no worse than stock's ~1800 (0.105 vs 0.123).
    """
    return 0.1 if duration < LONG_FILE_SECONDS else 0.2


@dataclass(frozen=True)
class Segmentation:
    """Per chunk, per frame, per local speaker: 0/1 activity (pyannote's binarized segmentation)."""

    data: np.ndarray  # (chunks, frames, local speakers) float32
    chunks: Frames  # the chunks' sliding window (start 0, duration 10 s, the step)


@dataclass(frozen=True)
class Diarization:
    """Turns as (start, end, cluster index), each cluster's centroid (rows by index), and where anyone and
    where several people speak (pyannote's ``support()`` and ``get_overlap()`` of the turns)."""

    turns: tuple[tuple[float, float, int], ...]
    exclusive: tuple[tuple[float, float, int], ...]
    centroids: np.ndarray
    speech: tuple[tuple[float, float], ...] = ()
    overlap: tuple[tuple[float, float], ...] = ()


def min_cluster_size(chunks: Frames) -> int:
    """The clustering's minimum cluster size for this chunk step: it counts chunks, so a step twice as long
    halves it (``MIN_CLUSTER_SIZE`` is for pyannote's step, a tenth of the window)."""
    return max(2, round(MIN_CLUSTER_SIZE * 0.1 * chunks.duration / chunks.step))


def chunk_starts(num_samples: int, window: int, step: int) -> list[int]:
    """pyannote's chunking: full windows every ``step`` samples, then one zero-padded last chunk if the file
    does not end on a window."""
    full = 1 + (num_samples - window) // step if num_samples >= window else 0
    starts = [i * step for i in range(full)]
    if num_samples < window or (num_samples - window) % step > 0:
        starts.append(full * step)
    return starts


def aggregate(
    scores: np.ndarray, chunks: Frames, frames: Frames, *, missing: float = 0.0, skip_average: bool = False
) -> np.ndarray:
    """Overlap-add of per-chunk frame scores onto the file's frames (pyannote's ``Inference.aggregate`` without
    warm-up or Hamming window): (chunks, frames per chunk, classes) -> (frames, classes)."""
    num_chunks, per_chunk, classes = scores.shape
    frames = Frames(chunks.start, frames.duration, frames.step)
    end = chunks.start + chunks.duration + (num_chunks - 1) * chunks.step + 0.5 * frames.duration
    total = frames.closest(end) + 1
    out = np.zeros((total, classes), dtype=np.float32)
    count = np.zeros((total, classes), dtype=np.float32)
    seen = np.zeros((total, classes), dtype=np.float32)
    for c in range(num_chunks):
        score = scores[c]
        mask = 1 - np.isnan(score)
        score = np.nan_to_num(score, nan=0.0)
        first = frames.closest(chunks.start + c * chunks.step + 0.5 * frames.duration)
        out[first : first + per_chunk] += score * mask
        count[first : first + per_chunk] += mask
        seen[first : first + per_chunk] = np.maximum(seen[first : first + per_chunk], mask)
    average = out if skip_average else out / np.maximum(count, 1e-12)
    average[seen == 0.0] = missing
    return average


def speaker_count(seg: Segmentation, frames: Frames) -> np.ndarray:
    """(frames,) instantaneous number of speakers (uint8)."""
    summed = np.sum(seg.data, axis=-1, keepdims=True)
    return np.rint(aggregate(summed, seg.chunks, frames)[:, 0]).astype(np.uint8)


def reconstruct(seg: Segmentation, hard_clusters: np.ndarray, count: np.ndarray, frames: Frames) -> np.ndarray:
    """(frames, clusters) 0/1: each frame's ``count`` most active clusters (pyannote's ``reconstruct`` and
    ``to_diarization``)."""
    num_chunks, per_chunk, _ = seg.data.shape
    num_clusters = int(np.max(hard_clusters)) + 1
    clustered = np.full((num_chunks, per_chunk, max(num_clusters, 0)), np.nan, dtype=np.float32)
    for c in range(num_chunks):
        cluster = hard_clusters[c]
        for k in np.unique(cluster):
            if k == -2:
                continue
            clustered[c, :, k] = np.max(seg.data[c][:, cluster == k], axis=1)
    activations = aggregate(clustered, seg.chunks, frames, skip_average=True)
    most = int(np.max(count)) if len(count) else 0
    if activations.shape[1] < most:
        activations = np.pad(activations, ((0, 0), (0, most - activations.shape[1])))
    length = min(len(activations), len(count))
    activations, count = activations[:length], count[:length]
    order = np.argsort(-activations, axis=-1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(length, axis=0), axis=1)
    return (ranks < count[:, None]).astype(np.float32)


def runs(active: np.ndarray) -> list[tuple[int, int]]:
    """(first frame, frame after the last) of each run of True."""
    change = np.diff(np.concatenate([[False], active, [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(change == 1).tolist(), np.flatnonzero(change == -1).tolist(), strict=True))


def turns_of(binary: np.ndarray, frames: Frames) -> list[tuple[float, float, int]]:
    """Runs of active frames per cluster as (start, end, cluster), from the middle of a run's first frame to
    the middle of the frame after it (pyannote's ``Binarize`` at 0.5 with no minimum durations), sorted as
    pyannote's ``Annotation`` lists them."""
    turns = [
        (*_span(a, b, len(binary), frames), k) for k in range(binary.shape[1]) for a, b in runs(binary[:, k] > 0.5)
    ]
    return sorted(turns)


def regions_of(active: np.ndarray, frames: Frames) -> list[tuple[float, float]]:
    """Runs of True as (start, end), timed as ``turns_of`` times turns; empty ones left out."""
    spans = [_span(a, b, len(active), frames) for a, b in runs(active)]
    return [(s, e) for s, e in spans if e > s]


def _span(first: int, after: int, num_frames: int, frames: Frames) -> tuple[float, float]:
    return float(frames.middle(first)), float(frames.middle(min(after, num_frames - 1)))


def clean_masks(masks: np.ndarray, min_frames: int) -> np.ndarray:
    """Speaker masks without the frames where several speakers talk at once, as pyannote's
    ``exclude_overlap`` does: a speaker with ``min_frames`` or fewer frames of their own keeps the whole mask.

    masks: (chunks, frames, speakers) 0/1.
    """
    alone = masks * (masks.sum(axis=2, keepdims=True) < 2)
    enough = alone.sum(axis=1, keepdims=True) > min_frames  # (chunks, 1, speakers)
    return np.where(enough, alone, masks)


def speaker_bounds(
    num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None
) -> tuple[int | None, int, float]:
    """pyannote's ``set_num_speakers``: (exact, minimum, maximum)."""
    num = num_speakers or None
    low = num or min_speakers or 1
    high: float = num or max_speakers or math.inf
    if low > high:
        raise ValueError(f"min_speakers ({low}) is more than max_speakers ({high})")
    return num, low, high


class Diarizer:
    """Runs the steps of the module doc with ``models`` (thread-compatible: one file at a time)."""

    def __init__(
        self,
        models: Models,
        *,
        threshold: float,
        segmentation_batch: int | None = None,
        embedding_batch: int = 32,
        feature_batch: int = 2,
    ):
        self.models = models
        self.facts = models.facts
        self.clustering = CannotLinkClustering(threshold=threshold, min_cluster_size=MIN_CLUSTER_SIZE)
        self._seg_batch = segmentation_batch or models.segmentation_batch
        self._emb_batch = embedding_batch
        self._feature_batch = feature_batch
        self._silence: np.ndarray | None = None

    # -- 1. segmentation ---------------------------------------------------------------------------------------

    def chunks_for(self, num_samples: int) -> Frames:
        step = segmentation_step(num_samples / SAMPLE_RATE) * self.facts.chunk_seconds
        return Frames(0.0, self.facts.chunk_seconds, step)

    def segment(self, waveform: np.ndarray, hook: Hook | None = None) -> Segmentation:
        chunks = self.chunks_for(len(waveform))
        window = int(round(self.facts.chunk_seconds * SAMPLE_RATE))
        starts = chunk_starts(len(waveform), window, int(round(chunks.step * SAMPLE_RATE)))
        out: np.ndarray | None = None
        batches = range(0, len(starts), self._seg_batch)
        for done, first in enumerate(batches, 1):
            picked = starts[first : first + self._seg_batch]
            batch = np.zeros((len(picked), 1, window), dtype=np.float32)
            for i, s in enumerate(picked):
                piece = waveform[s : s + window]
                batch[i, 0, : len(piece)] = to_float(piece)
            scores = self._scores(batch)
            if out is None:
                out = np.empty((len(starts), scores.shape[1], self.facts.powerset.shape[1]), dtype=np.float32)
            hard = np.eye(scores.shape[2], dtype=np.float32)[np.argmax(scores, axis=2)]
            out[first : first + len(picked)] = hard @ self.facts.powerset
            if hook is not None:
                hook("segmentation", done, len(batches))
        assert out is not None
        return Segmentation(out, chunks)

    def _scores(self, batch: np.ndarray) -> np.ndarray:
        """The model's scores, with chunks of digital silence answered once and for all."""
        silent = ~batch.reshape(len(batch), -1).any(axis=1)
        if not silent.any():
            return self.models.segment(batch)
        if self._silence is None:
            self._silence = self.models.segment(np.zeros((1, *batch.shape[1:]), dtype=np.float32))[0]
        out = np.empty((len(batch), *self._silence.shape), dtype=np.float32)
        out[silent] = self._silence
        if (~silent).any():
            out[~silent] = self.models.segment(np.ascontiguousarray(batch[~silent]))
        return out

    # -- 3. embeddings -----------------------------------------------------------------------------------------

    def embed(self, waveform: np.ndarray, seg: Segmentation, hook: Hook | None = None) -> np.ndarray:
        """(chunks, local speakers, dimension) embeddings, NaN where a local speaker is silent."""
        num_chunks, num_frames, num_speakers = seg.data.shape
        masks = seg.data
        active = masks.sum(axis=1) > 0  # (chunks, speakers)
        masks = clean_masks(masks, min_frames=math.ceil(num_frames * MIN_CLEAN_SECONDS / seg.chunks.duration))
        todo = np.flatnonzero(active.any(axis=1))
        embeddings = np.full((num_chunks, num_speakers, self.facts.dimension), np.nan, dtype=np.float32)
        blocks = BlockFeatures(self.models, waveform, seg.chunks.duration, self._feature_batch)
        batches = [todo[i : i + self._emb_batch] for i in range(0, len(todo), self._emb_batch)]
        for done, picked in enumerate(batches, 1):
            features = np.stack([blocks.chunk(seg.chunks.start + int(c) * seg.chunks.step) for c in picked])
            weights = np.ascontiguousarray(masks[picked].transpose(0, 2, 1))  # (batch, speakers, frames)
            embeddings[picked] = self.models.pool(features, weights)
            blocks.forget_before(seg.chunks.start + int(picked[-1]) * seg.chunks.step)
            if hook is not None:
                hook("embeddings", done, len(batches))
        embeddings[~active] = np.nan
        return embeddings

    # -- all steps ---------------------------------------------------------------------------------------------

    def __call__(
        self,
        waveform: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        hook: Hook | None = None,
    ) -> Diarization:
        num, low, high = speaker_bounds(num_speakers, min_speakers, max_speakers)
        seg = self.segment(waveform, hook)
        frames = self.facts.receptive_field
        count = speaker_count(seg, frames)
        if len(count) == 0 or count.max() == 0:
            return Diarization((), (), np.zeros((0, self.facts.dimension), dtype=np.float32))
        embeddings = self.embed(waveform, seg, hook)
        self.clustering.min_cluster_size = min_cluster_size(seg.chunks)
        hard, _, centroids = self.clustering(
            embeddings,
            seg.data,
            reach=round(seg.chunks.duration / seg.chunks.step),
            num_clusters=num,
            min_clusters=low,
            max_clusters=high,
        )
        count = np.minimum(count, high).astype(np.int8)
        hard[seg.data.sum(axis=1) == 0] = -2
        binary = reconstruct(seg, hard, count, frames)
        exclusive = turns_of(reconstruct(seg, hard, np.minimum(count, 1), frames), frames)
        speakers = binary.sum(axis=1)
        return Diarization(
            tuple(turns_of(binary, frames)),
            tuple(exclusive),
            centroids,
            speech=tuple(regions_of(speakers >= 1, frames)),
            overlap=tuple(regions_of(speakers >= 2, frames)),
        )

    def count_regions(self, waveform: np.ndarray, minimum: int, hook: Hook | None = None) -> list[tuple[float, float]]:
        """Where at least ``minimum`` people speak at once (1: speech, 2: overlap), from the segmentation alone,
        timed at frame middles."""
        seg = self.segment(waveform, hook)
        frames = self.facts.receptive_field
        spans = runs(speaker_count(seg, frames) >= minimum)
        regions = [(float(frames.middle(a)), float(frames.middle(b - 1))) for a, b in spans]
        return [r for r in regions if r[1] > r[0]]


class BlockFeatures:
    """CAM++ frame features of the file, computed block by block on demand and dropped when passed."""

    def __init__(self, models: Models, waveform: np.ndarray, block_seconds: float, batch: int = 2):
        self._models = models
        self._waveform = waveform  # mono 16 kHz, 16-bit or float
        self._block = block_seconds
        self._batch = batch
        self._margin = MARGIN_SECONDS
        self._cache: dict[int, np.ndarray] = {}
        self.fps: int | None = None
        self._per_block = 0

    def _audio(self, start: float, seconds: float) -> np.ndarray:
        """Mono float samples from ``start`` for ``seconds``, zero-padded outside the file."""
        first = int(round(start * SAMPLE_RATE))
        out = np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)
        lo, hi = max(first, 0), min(first + len(out), len(self._waveform))
        if hi > lo:
            out[lo - first : hi - first] = to_float(self._waveform[lo:hi])
        return out

    def _compute(self, first: int) -> None:
        last = max(first, math.ceil(len(self._waveform) / SAMPLE_RATE / self._block) - 1)
        blocks = [k for k in range(first, min(first + self._batch, last + 1)) if k not in self._cache]
        if not blocks:
            return
        seconds = self._block + 2 * self._margin
        audio = np.stack([self._audio(k * self._block - self._margin, seconds) for k in blocks])
        out = self._models.features(audio)
        self._learn_rate(out.shape[-1], seconds)
        skip = round(self._margin * self.fps)  # type: ignore[operator]
        for k, block in zip(blocks, out, strict=True):
            kept = block[:, skip : skip + self._per_block]
            if kept.shape[-1] < self._per_block:  # rounding at the very end: repeat the last frame
                pad = np.repeat(kept[:, -1:], self._per_block - kept.shape[-1], axis=1)
                kept = np.concatenate([kept, pad], axis=1)
            self._cache[k] = kept

    def _learn_rate(self, frames: int, seconds: float) -> None:
        if self.fps is None:  # CAM++: 10 ms fbank hop, stride 2 -> 50 frames a second
            self.fps = round(frames / seconds)
            self._per_block = round(self._block * self.fps)

    def chunk(self, start: float) -> np.ndarray:
        """(channels, frames) features of the chunk starting at ``start`` seconds."""
        if self.fps is None:  # the first pass tells the frame rate; it computes the block this chunk starts in
            self._compute(int(start // self._block))
        assert self.fps is not None
        first = round(start * self.fps)
        k0, k1 = first // self._per_block, (first + self._per_block - 1) // self._per_block
        for k in range(k0, k1 + 1):
            if k not in self._cache:
                self._compute(k)
        joined = np.concatenate([self._cache[k] for k in range(k0, k1 + 1)], axis=-1)
        offset = first - k0 * self._per_block
        return joined[:, offset : offset + self._per_block]

    def forget_before(self, start: float) -> None:
        """Drop blocks that end before ``start`` (chunks arrive in time order)."""
        if self.fps is None:
            return
        keep_from = math.floor(round(start * self.fps) / self._per_block)
        for k in [k for k in self._cache if k < keep_from]:
            del self._cache[k]
