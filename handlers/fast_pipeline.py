"""pyannote's ``SpeakerDiarization`` with a cheaper embedding step and diarist's clustering (same models).

Stock ``get_embeddings`` runs the whole embedding network once per (chunk, local speaker): with
segmentation-3.0's three local speakers and 10 s chunks every second, every second of audio goes through
the network 30 times, only the final statistics pooling differing (the speaker's frames weight it).

Here the network's frame-level features are computed once per stretch of audio: the file is cut into
blocks as long as a chunk, each run with a little audio either side (``margin``) so that no frame sees the
block's edge, and only the block's own frames are kept. A chunk's features are then the frames of the blocks
it spans, and pyannote's ``StatsPool`` pools them per local speaker with the segmentation's masks, as in
stock. Chunks where nobody speaks are skipped and inactive speakers get NaN embeddings, which the
clustering ignores. Blocks are computed in time order and dropped once no later chunk needs them, so memory
stays flat however long the file is.

Embeddings leave out frames where several people talk at once (pyannote's ``exclude_overlap``, on by
default for this pipeline), and clustering is ``handlers/clustering.py``'s cannot-link AHC.

What differs from stock in the features: CAM++'s utterance-level context and its feature mean normalisation
are taken over a block (plus margins) rather than over the chunk, both 10-12 s of the same audio. The
benchmarks (``benchmarks/``) measure the effect on DER against stock in the same run.

Used only with embedding models that expose ``forward_frames`` / ``pooling`` / ``dense`` (the bundled
CAM++); any other model falls back to the stock method.

The waveform may be 16-bit (``audio.decode``'s samples, half the memory of float on long files): segmentation
and the block features scale each batch to float on its way into a model, so the whole file is never held
as float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pyannote.audio import Inference
from pyannote.audio.pipelines import SpeakerDiarization

from diarist.handlers.audio import PCM_FULL_SCALE
from diarist.handlers.clustering import CannotLinkClustering

#: seconds of audio run on either side of each block and then discarded
MARGIN_SECONDS = 1.0


def pcm_to_float(samples: torch.Tensor) -> torch.Tensor:
    """float samples in [-1, 1) from 16-bit ones; float input is returned as it is."""
    if samples.dtype != torch.int16:
        return samples
    return samples.float().mul_(1 / PCM_FULL_SCALE)


class _PcmInference(Inference):
    """pyannote's sliding-window inference, also over a 16-bit waveform: each batch of chunks becomes float
    only as it goes into the model (the chunks themselves are views into the waveform)."""

    def infer(self, chunks: torch.Tensor) -> Any:
        return super().infer(pcm_to_float(chunks))


def segmentation_step(duration: float) -> float:
    """Chunk step as a fraction of the 10 s window: 0.1 (pyannote's) below 10 minutes, 0.2 from there on.

    Segmentation costs the same per chunk whatever it contains, so on long files the step is most of the
    remaining time. Clustering needs enough chunks per speaker: a 30 s file has 21 chunks at 0.1 and only 11
    at 0.2, which measurably hurt (pyannote's sample: DER 0.052 -> 0.072); a 30-minute conversation has
    ~900 at 0.2 and clustered no worse than stock's ~1800 (0.105 vs 0.123).
    """
    return 0.1 if duration < LONG_FILE_SECONDS else 0.2


#: a speaker's own (non-overlapped) speech in a chunk below this is too little for an embedding of it alone
MIN_CLEAN_SECONDS = 0.5

#: from this duration on, the coarser chunk step pays (see ``segmentation_step``)
LONG_FILE_SECONDS = 600.0


class FastSpeakerDiarization(SpeakerDiarization):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("embedding_exclude_overlap", True)
        super().__init__(*args, **kwargs)
        if self.klustering == "AgglomerativeClustering":
            self.clustering = CannotLinkClustering(metric=self._embedding.metric)
        stock = self._segmentation
        self._segmentation = _PcmInference(
            stock.model, duration=stock.duration, step=stock.step, skip_aggregation=True, batch_size=stock.batch_size
        )
        # the instantiated minimum cluster size is meant for the constructor's step; read at the first run
        self._base_min_cluster: int | None = None

    def apply(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        """Stock ``apply``, fitted to this file first (``fit_to``)."""
        return super().apply(self.fit_to(file), *args, **kwargs)

    def fit_to(self, file: Any) -> Any:
        """Choose the chunk step (and the clustering's minimum cluster size, which counts chunks) for this
        file's duration; returns the file, with float samples if pyannote's own embedding step will crop it.

        ``apply`` calls it; so does anything else that runs the segmentation on its own (VAD, OSD), so that
        every task sees the same chunks for the same file.
        """
        if self._base_min_cluster is None:
            self._base_min_cluster = int(self.clustering.min_cluster_size)
        step = self.segmentation_step
        if "waveform" in file:
            step = max(step, segmentation_step(file["waveform"].shape[-1] / file["sample_rate"]))
            if not self._block_frames_apply():
                file = {**file, "waveform": pcm_to_float(file["waveform"])}
        self._segmentation.step = step * self._segmentation.duration
        self.clustering.min_cluster_size = max(2, round(self._base_min_cluster * self.segmentation_step / step))
        return file

    def _block_frames_apply(self) -> bool:
        """Whether ``get_embeddings`` takes the block-features path rather than pyannote's own."""
        return not self.training and hasattr(self._embedding.model_, "forward_frames")

    def get_embeddings(
        self,
        file: Any,
        binary_segmentations: Any,
        exclude_overlap: bool = False,
        hook: Callable[..., None] | None = None,
    ) -> np.ndarray:
        model = self._embedding.model_
        if not self._block_frames_apply() or "waveform" not in file:
            return super().get_embeddings(file, binary_segmentations, exclude_overlap=exclude_overlap, hook=hook)
        num_chunks, num_frames, num_speakers = binary_segmentations.data.shape
        masks = np.nan_to_num(binary_segmentations.data, nan=0.0).astype(np.float32)
        active = masks.sum(axis=1) > 0  # (chunks, speakers)
        if exclude_overlap:
            seconds = binary_segmentations.sliding_window.duration
            masks = clean_masks(masks, min_frames=math.ceil(num_frames * MIN_CLEAN_SECONDS / seconds))
        todo = np.flatnonzero(active.any(axis=1))
        embeddings = np.full((num_chunks, num_speakers, model.dimension), np.nan, dtype=np.float32)
        frames = _BlockFrames(model, file, binary_segmentations.sliding_window.duration, self._embedding.device)
        window = binary_segmentations.sliding_window
        batches = [todo[i : i + self.embedding_batch_size] for i in range(0, len(todo), self.embedding_batch_size)]
        if hook is not None:
            hook("embeddings", None, total=len(batches), completed=0)
        for i, chunks in enumerate(batches, 1):
            features = torch.stack([frames.chunk(window[int(c)].start) for c in chunks])
            weights = torch.from_numpy(masks[chunks].transpose(0, 2, 1).copy())  # (batch, speakers, frames)
            with torch.inference_mode():
                pooled = model.pooling(features, weights=weights.to(features.device))
                batch = model.dense(pooled.reshape(-1, pooled.shape[-1])).reshape(len(chunks), num_speakers, -1)
            embeddings[chunks] = batch.float().cpu().numpy()
            frames.forget_before(window[int(chunks[-1])].start)
            if hook is not None:
                hook("embeddings", None, total=len(batches), completed=i)
        embeddings[~active] = np.nan
        return embeddings


def clean_masks(masks: np.ndarray, min_frames: int) -> np.ndarray:
    """Speaker masks without the frames where several speakers talk at once, as pyannote's
    ``exclude_overlap`` does: a speaker with ``min_frames`` or fewer frames of their own keeps the whole mask.

    masks: (chunks, frames, speakers) 0/1.
    """
    alone = masks * (masks.sum(axis=2, keepdims=True) < 2)
    enough = alone.sum(axis=1, keepdims=True) > min_frames  # (chunks, 1, speakers)
    return np.where(enough, alone, masks)


class _BlockFrames:
    """Frame-level features of the file, computed block by block on demand and dropped when passed."""

    def __init__(self, model: Any, file: Any, block_seconds: float, device: torch.device, batch: int = 2):
        self._model = model
        self._device = device
        self._batch = batch
        self._waveform = file["waveform"]  # (channels, samples), already mono 16 kHz in diarist
        self._rate = int(file["sample_rate"])
        self._block = block_seconds
        self._margin = MARGIN_SECONDS
        # frames per second of the model's output, from one dry run (CAM++: 10 ms fbank hop, stride 2)
        with torch.inference_mode():
            probe = model.forward_frames(torch.zeros(1, 1, int((block_seconds + 2 * self._margin) * self._rate)))
        self.fps = round(probe.shape[-1] / (block_seconds + 2 * self._margin))
        self._per_block = round(block_seconds * self.fps)
        self._cache: dict[int, torch.Tensor] = {}

    def _audio(self, start: float, seconds: float) -> torch.Tensor:
        """Mono samples from ``start`` for ``seconds``, zero-padded outside the file."""
        first = int(round(start * self._rate))
        length = int(round(seconds * self._rate))
        out = torch.zeros(1, length)
        lo, hi = max(first, 0), min(first + length, self._waveform.shape[-1])
        if hi > lo:
            out[0, lo - first : hi - first] = pcm_to_float(self._waveform[0, lo:hi])
        return out

    def _compute(self, first: int) -> None:
        last = max(first, math.ceil(self._waveform.shape[-1] / self._rate / self._block) - 1)
        blocks = [k for k in range(first, min(first + self._batch, last + 1)) if k not in self._cache]
        if not blocks:
            return
        audio = torch.stack(
            [self._audio(k * self._block - self._margin, self._block + 2 * self._margin) for k in blocks]
        )
        with torch.inference_mode():
            out = self._model.forward_frames(audio.to(self._device))
        skip = round(self._margin * self.fps)
        for k, block in zip(blocks, out, strict=True):
            kept = block[:, skip : skip + self._per_block]
            if kept.shape[-1] < self._per_block:  # rounding at the very end: repeat the last frame
                kept = torch.cat([kept, kept[:, -1:].expand(-1, self._per_block - kept.shape[-1])], dim=-1)
            self._cache[k] = kept

    def chunk(self, start: float) -> torch.Tensor:
        """(channels, frames) features of the chunk starting at ``start`` seconds."""
        first = round(start * self.fps)
        k0, k1 = first // self._per_block, (first + self._per_block - 1) // self._per_block
        for k in range(k0, k1 + 1):
            if k not in self._cache:
                self._compute(k)
        joined = torch.cat([self._cache[k] for k in range(k0, k1 + 1)], dim=-1)
        offset = first - k0 * self._per_block
        return joined[:, offset : offset + self._per_block]

    def forget_before(self, start: float) -> None:
        """Drop blocks that end before ``start`` (chunks arrive in time order)."""
        keep_from = math.floor(round(start * self.fps) / self._per_block)
        for k in [k for k in self._cache if k < keep_from]:
            del self._cache[k]
