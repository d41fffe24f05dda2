"""diarist's fast embedding step against pyannote's own, on real audio with the bundled weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyannote.core import SlidingWindow, SlidingWindowFeature

from diarist.handlers.audio import decode, to_float
from diarist.handlers.clustering import CannotLinkClustering
from diarist.handlers.engine import LocalEngine
from diarist.handlers.fast_pipeline import (
    LONG_FILE_SECONDS,
    FastSpeakerDiarization,
    _BlockFrames,
    segmentation_step,
)
from diarist.policies.flavor import Task

from conftest import der, reference


@pytest.fixture(scope="module")
def stock_engine():
    e = LocalEngine(fast=False)
    e.load()
    return e


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class TestFastPipeline:
    def test_the_bundled_engine_uses_it(self, engine, stock_engine):
        """fast = true (the default) runs the fast subclass; fast = false pyannote's own class."""
        assert type(engine._pipeline) is FastSpeakerDiarization
        assert not isinstance(stock_engine._pipeline, FastSpeakerDiarization)

    def test_accuracy_matches_stock_on_real_speech(self, engine, stock_engine, sample):
        """pyannote's sample: same speaker count and DER no worse than stock + 0.005, in the same run."""
        wav, rttm = sample
        waveform = decode(wav)
        fast = engine.run(waveform, uri="sample", task=Task.DIARIZATION)
        stock = stock_engine.run(waveform, uri="sample", task=Task.DIARIZATION)
        assert len({s.speaker for s in fast.segments}) == len({s.speaker for s in stock.segments}) == 2
        assert der(reference(rttm), fast.segments) <= der(reference(rttm), stock.segments) + 0.005

    def test_embeddings_agree_with_stock(self, engine, stock_engine, sample):
        """Per (chunk, speaker), the fast embeddings point where stock's do (cosine 0.90-0.95 measured: the
        features' normalisation spans a block instead of the chunk); inactive speakers are NaN."""
        file = {"waveform": torch.from_numpy(to_float(decode(sample[0])))[None], "sample_rate": 16000, "uri": "s"}
        p = engine._pipeline
        binary = p.get_segmentations(file)
        fast = p.get_embeddings(file, binary)
        stock = stock_engine._pipeline.get_embeddings(file, binary)
        active = np.nan_to_num(binary.data).sum(axis=1) > 0
        assert np.isnan(fast[~active]).all()
        sims = [cosine(fast[c, s], stock[c, s]) for c, s in zip(*np.nonzero(active), strict=True)]
        assert len(sims) > 20 and min(sims) > 0.85 and float(np.median(sims)) > 0.9, sorted(sims)[:5]

    def test_sixteen_bit_samples_give_what_float_samples_give(self, engine, sample):
        """The engine keeps the decoded file 16-bit (half the memory); segmentation and embeddings, scaled
        batch by batch, come out as they do from the same samples held as float."""
        pcm = torch.from_numpy(decode(sample[0]))[None]
        assert pcm.dtype == torch.int16
        as_pcm = {"waveform": pcm, "sample_rate": 16000, "uri": "s"}
        as_float = {"waveform": torch.from_numpy(to_float(pcm.numpy())), "sample_rate": 16000, "uri": "s"}
        p = engine._pipeline
        seg_pcm, seg_float = p.get_segmentations(as_pcm), p.get_segmentations(as_float)
        np.testing.assert_allclose(seg_pcm.data, seg_float.data, atol=1e-6)
        emb_pcm, emb_float = p.get_embeddings(as_pcm, seg_pcm), p.get_embeddings(as_float, seg_float)
        np.testing.assert_allclose(emb_pcm, emb_float, atol=1e-4)
        by_pcm = engine.run(pcm.numpy()[0], uri="s", task=Task.DIARIZATION)
        by_float = engine.run(as_float["waveform"].numpy()[0], uri="s", task=Task.DIARIZATION)
        assert by_pcm.segments == by_float.segments and len(by_pcm.segments) > 5

    def test_silent_chunks_are_not_computed(self, engine):
        """A chunk where nobody speaks costs no network pass and gets NaN embeddings."""
        p = engine._pipeline
        waveform = torch.randn(1, 16000 * 30) * 0.01
        file = {"waveform": waveform, "sample_rate": 16000, "uri": "x"}
        window = SlidingWindow(start=0.0, duration=10.0, step=10.0)
        masks = np.zeros((3, 589, 3), dtype=np.float32)
        masks[1, 100:300, 0] = 1.0  # only chunk 1, speaker 0 speaks
        calls = []
        model = p._embedding.model_
        original = model.forward_frames
        model.forward_frames = lambda w: calls.append(w.shape[0]) or original(w)
        try:
            out = p.get_embeddings(file, SlidingWindowFeature(masks, window))
        finally:
            del model.forward_frames
        assert not np.isnan(out[1, 0]).any() and np.isnan(out[0]).all() and np.isnan(out[2]).all()
        # one probe pass to learn the frame rate, then the blocks chunk 1 needs (a batch of 8 from block 1)
        assert len(calls) == 2

    def test_block_features_match_a_chunk_run_alone(self, engine, sample):
        """A chunk cut from two blocks embeds close to the chunk run on its own (cosine 0.93 measured)."""
        model = engine._pipeline._embedding.model_
        waveform = torch.from_numpy(to_float(decode(sample[0])))[None]
        blocks = _BlockFrames(model, {"waveform": waveform, "sample_rate": 16000}, 10.0, torch.device("cpu"))
        assert blocks.fps == 50
        with torch.inference_mode():
            alone = model.forward_embedding(model.forward_frames(waveform[None, :, 16000 * 5 : 16000 * 15]))[0]
            cut = model.forward_embedding(blocks.chunk(5.0)[None])[0]
        assert cosine(alone.numpy(), cut.numpy()) > 0.9


class TestChunkStep:
    def test_step_by_duration(self):
        """pyannote's 0.1 for short files, 0.2 from LONG_FILE_SECONDS on."""
        assert segmentation_step(30.0) == 0.1
        assert segmentation_step(LONG_FILE_SECONDS - 1) == 0.1
        assert segmentation_step(LONG_FILE_SECONDS) == 0.2

    def test_each_run_gets_the_step_of_its_file(self, engine):
        """A long file runs with the coarse step and half the minimum cluster size; a short one after it is
        back to pyannote's own."""
        p = engine._pipeline
        quiet = np.zeros(int(16000 * (LONG_FILE_SECONDS + 5)), dtype=np.float32)
        engine.run(quiet, uri="long", task=Task.DIARIZATION)
        assert p._segmentation.step == pytest.approx(2.0) and p.clustering.min_cluster_size == 6
        engine.run(quiet[: 16000 * 20], uri="short", task=Task.DIARIZATION)
        assert p._segmentation.step == pytest.approx(1.0) and p.clustering.min_cluster_size == 12
        engine.run(quiet, uri="long", task=Task.VAD)  # the segmentation-only tasks get the same chunks
        assert p._segmentation.step == pytest.approx(2.0)
        engine.run(quiet[: 16000 * 20], uri="short", task=Task.OSD)
        assert p._segmentation.step == pytest.approx(1.0)


class TestTrainingCap:
    def test_trains_on_an_even_subset_when_there_are_too_many(self):
        """Above the cap, the training set is evenly spread over the file, never more than the cap."""
        clustering = CannotLinkClustering(metric="cosine")
        clustering.max_training = 50
        chunks, speakers = 400, 3
        embeddings = np.random.default_rng(0).normal(size=(chunks, speakers, 8)).astype(np.float32)
        segmentation = np.zeros((chunks, 100, speakers), dtype=np.float32)
        segmentation[:, :, 0] = 1.0  # speaker 0 alone and active in every chunk
        kept, chunk_idx, speaker_idx = clustering.filter_embeddings(
            embeddings, SlidingWindowFeature(segmentation, SlidingWindow(duration=10.0, step=1.0))
        )
        assert len(kept) == 50 and set(speaker_idx) == {0}
        assert chunk_idx[0] == 0 and chunk_idx[-1] == chunks - 1
        assert np.all(np.diff(chunk_idx) > 0)

    def test_chunks_are_kept_whole(self):
        """Two people in every chunk: thinning keeps both embeddings of each chunk it keeps (together they
        say "two different people"), and stays under the cap."""
        clustering = CannotLinkClustering(metric="cosine")
        clustering.max_training = 51
        chunks = 400
        embeddings = np.random.default_rng(1).normal(size=(chunks, 3, 8)).astype(np.float32)
        segmentation = np.zeros((chunks, 100, 3), dtype=np.float32)
        segmentation[:, :50, 0] = segmentation[:, 50:, 2] = 1.0
        kept, chunk_idx, speaker_idx = clustering.filter_embeddings(
            embeddings, SlidingWindowFeature(segmentation, SlidingWindow(duration=10.0, step=1.0))
        )
        assert 40 <= len(kept) <= 51 and set(speaker_idx) == {0, 2}
        assert all(np.count_nonzero(chunk_idx == c) == 2 for c in np.unique(chunk_idx))

    def test_below_the_cap_nothing_changes(self):
        """Short files: every usable embedding trains the clustering, as in stock."""
        clustering = CannotLinkClustering(metric="cosine")
        embeddings = np.ones((20, 3, 8), dtype=np.float32)
        segmentation = np.zeros((20, 100, 3), dtype=np.float32)
        segmentation[:, :, 1] = 1.0
        kept, _, speaker_idx = clustering.filter_embeddings(
            embeddings, SlidingWindowFeature(segmentation, SlidingWindow(duration=10.0, step=1.0))
        )
        assert len(kept) == 20 and set(speaker_idx) == {1}
