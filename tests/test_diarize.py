"""diarist's own pipeline for the bundled models (handlers/diarize.py, handlers/bundled_models.py), step by step
against pyannote's own code on the same inputs, and end to end against stock pyannote on real speech."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pyannote.audio.pipelines import SpeakerDiarization
from pyannote.core import SlidingWindow, SlidingWindowFeature

from diarist.handlers import bundled_models
from diarist.handlers.audio import decode, to_float
from diarist.handlers.bundled_models import OnnxModels, TorchModels
from diarist.handlers.clustering import CannotLinkClustering
from diarist.handlers.diarize import (
    LONG_FILE_SECONDS,
    BlockFeatures,
    Diarizer,
    Segmentation,
    aggregate,
    min_cluster_size,
    reconstruct,
    segmentation_step,
    speaker_count,
    turns_of,
)
from diarist.handlers.engine import BUNDLED_EMBEDDING, BUNDLED_SEGMENTATION, LocalEngine, bundled_model_dir
from diarist.handlers.fbank import campplus_features
from diarist.policies.flavor import Task

from conftest import der, reference


@pytest.fixture(scope="module")
def stock_engine():
    e = LocalEngine(fast=False)
    e.load()
    return e


@pytest.fixture(scope="module")
def torch_models():
    root = bundled_model_dir()
    return TorchModels(root / BUNDLED_SEGMENTATION, root / BUNDLED_EMBEDDING, "cpu")


@pytest.fixture(scope="module")
def sample_pcm(sample) -> np.ndarray:
    return decode(sample[0])


def window(seg: Segmentation) -> SlidingWindow:
    c = seg.chunks
    return SlidingWindow(start=c.start, duration=c.duration, step=c.step)


def receptive_field(engine) -> SlidingWindow:
    rf = engine._pipeline.facts.receptive_field
    return SlidingWindow(start=rf.start, duration=rf.duration, step=rf.step)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class TestTheEngine:
    def test_the_bundled_engine_runs_onnx_without_pyannote(self, engine, stock_engine):
        """fast = true (the default) runs diarist's pipeline on ONNX Runtime; fast = false pyannote's class."""
        assert isinstance(engine._pipeline, Diarizer) and isinstance(engine._pipeline.models, OnnxModels)
        assert isinstance(stock_engine._pipeline, SpeakerDiarization)
        assert engine.info.models == stock_engine.info.models

    def test_accuracy_matches_stock_on_real_speech(self, engine, stock_engine, sample, sample_pcm):
        """pyannote's sample: same speaker count and DER no worse than stock + 0.005, in the same run."""
        fast = engine.run(sample_pcm, uri="sample", task=Task.DIARIZATION)
        stock = stock_engine.run(sample_pcm, uri="sample", task=Task.DIARIZATION)
        assert len({s.speaker for s in fast.segments}) == len({s.speaker for s in stock.segments}) == 2
        assert der(reference(sample[1]), fast.segments) <= der(reference(sample[1]), stock.segments) + 0.005

    def test_a_fresh_process_never_imports_torch_or_pyannote_audio(self, sample, tmp_path):
        """What makes a one-shot run start in a second: the bundled engine on a CPU loads the cached export
        with onnxruntime and numpy alone."""
        import subprocess
        import sys

        code = (
            "import sys\n"
            "from diarist.handlers.engine import LocalEngine\n"
            "from diarist.handlers.audio import decode\n"
            "from diarist.policies.flavor import Task\n"
            "e = LocalEngine(device='auto'); e.load()\n"
            f"out = e.run(decode({str(sample[0])!r}), uri='s', task=Task.DIARIZATION)\n"
            "assert len({s.speaker for s in out.segments}) == 2\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pyannote')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", out.stdout[:500]

    def test_onnx_and_torch_give_the_same_turns(self, engine, torch_models, sample_pcm):
        """The ONNX export is the torch networks: the same turns on real speech (GPU hosts run the torch ones)."""
        onnx = engine._pipeline
        on_torch = Diarizer(torch_models, threshold=0.55)
        a, b = onnx(sample_pcm), on_torch(sample_pcm)
        assert [(round(s, 2), round(e, 2), k) for s, e, k in a.turns] == [
            (round(s, 2), round(e, 2), k) for s, e, k in b.turns
        ]
        np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-3)


class TestStepsAgainstPyannote:
    """Each numpy step gives what pyannote's own gives for the same input."""

    def test_segmentation(self, engine, stock_engine, sample_pcm):
        """Chunks, padding of the last one and the powerset decoding, against pyannote's ``Inference``."""
        seg = engine._pipeline.segment(sample_pcm)
        file = {"waveform": torch.from_numpy(to_float(sample_pcm))[None], "sample_rate": 16000, "uri": "s"}
        stock = stock_engine._pipeline.get_segmentations(file)
        assert seg.data.shape == stock.data.shape == (21, 589, 3)
        assert window(seg).step == stock.sliding_window.step and window(seg).duration == stock.sliding_window.duration
        assert np.mean(seg.data != stock.data) < 1e-4  # ONNX Runtime's float rounding may flip a frame

    def test_count_reconstruction_and_turns(self, engine, sample_pcm):
        p = engine._pipeline
        seg = p.segment(sample_pcm)
        frames = receptive_field(engine)
        binary = SlidingWindowFeature(seg.data, window(seg))
        stock_count = SpeakerDiarization.speaker_count(binary, frames, warm_up=(0.0, 0.0))
        count = speaker_count(seg, p.facts.receptive_field)
        np.testing.assert_array_equal(count, stock_count.data[:, 0])

        rng = np.random.default_rng(0)
        hard = rng.integers(0, 4, size=(seg.data.shape[0], seg.data.shape[2])).astype(np.int8)
        hard[seg.data.sum(axis=1) == 0] = -2
        pipeline = SpeakerDiarization.__new__(SpeakerDiarization)  # reconstruct/to_diarization use no state
        stock_count.data = np.minimum(stock_count.data, 2).astype(np.int8)
        stock = pipeline.reconstruct(binary, hard, stock_count)
        ours = reconstruct(seg, hard, np.minimum(count, 2).astype(np.int8), p.facts.receptive_field)
        np.testing.assert_array_equal(ours, stock.data)

        annotation = SpeakerDiarization.to_annotation(stock, min_duration_off=0.0)
        expected = [(s.start, s.end, k) for s, _, k in annotation.itertracks(yield_label=True)]
        got = turns_of(ours, p.facts.receptive_field)
        assert len(got) > 10
        assert [(round(a, 6), round(b, 6), k) for a, b, k in got] == [
            (round(a, 6), round(b, 6), k) for a, b, k in expected
        ]

    def test_aggregate_with_gaps(self):
        """NaN (a cluster absent from a chunk) neither counts nor averages, as in pyannote."""
        from pyannote.audio import Inference

        from diarist.handlers.bundled_models import Frames

        rng = np.random.default_rng(1)
        scores = rng.random((7, 50, 3)).astype(np.float32)
        scores[2, :, 1] = np.nan
        scores[:, :, 2] = np.nan
        chunks, frames = Frames(0.0, 5.0, 1.0), Frames(0.0, 0.15, 0.1)
        for skip in (False, True):
            stock = Inference.aggregate(
                SlidingWindowFeature(scores.copy(), SlidingWindow(start=0.0, duration=5.0, step=1.0)),
                SlidingWindow(start=0.0, duration=0.15, step=0.1),
                hamming=False,
                missing=0.0,
                skip_average=skip,
            )
            ours = aggregate(scores.copy(), chunks, frames, skip_average=skip)
            np.testing.assert_allclose(ours, stock.data, rtol=1e-6)

    def test_full_task_regions_match_pyannote(self, engine, sample_pcm):
        """Speech is the turns' support and overlap where two turns meet, as pyannote.core computes them."""
        from pyannote.core import Annotation, Segment

        out = engine.run(sample_pcm, uri="s", task=Task.FULL)
        annotation = Annotation()
        for i, s in enumerate(out.segments):
            annotation[Segment(s.start, s.end), i] = s.speaker
        support = [(round(s.start, 3), round(s.end, 3)) for s in annotation.get_timeline().support()]
        overlap = [(round(s.start, 3), round(s.end, 3)) for s in annotation.get_overlap()]
        assert [(r.start, r.end) for r in out.vad] == support and len(support) > 3
        assert [(r.start, r.end) for r in out.overlap] == overlap


class TestEmbeddings:
    def test_embeddings_agree_with_stock(self, engine, stock_engine, sample_pcm):
        """Per (chunk, speaker), the block embeddings point where stock's do (cosine 0.90-0.95 measured: the
        features' normalisation spans a block instead of the chunk); inactive speakers are NaN."""
        p = engine._pipeline
        seg = p.segment(sample_pcm)
        ours = p.embed(sample_pcm, seg)
        file = {"waveform": torch.from_numpy(to_float(sample_pcm))[None], "sample_rate": 16000, "uri": "s"}
        binary = SlidingWindowFeature(seg.data, window(seg))
        stock = stock_engine._pipeline.get_embeddings(file, binary)
        active = seg.data.sum(axis=1) > 0
        assert np.isnan(ours[~active]).all()
        sims = [cosine(ours[c, s], stock[c, s]) for c, s in zip(*np.nonzero(active), strict=True)]
        assert len(sims) > 20 and min(sims) > 0.85 and float(np.median(sims)) > 0.9, sorted(sims)[:5]

    def test_sixteen_bit_samples_give_what_float_samples_give(self, engine, sample_pcm):
        """The engine keeps the decoded file 16-bit (half the memory); each batch becomes float on its way in."""
        assert sample_pcm.dtype == np.int16
        p = engine._pipeline
        as_float = to_float(sample_pcm)
        seg_pcm, seg_float = p.segment(sample_pcm), p.segment(as_float)
        np.testing.assert_array_equal(seg_pcm.data, seg_float.data)
        np.testing.assert_allclose(p.embed(sample_pcm, seg_pcm), p.embed(as_float, seg_float), atol=1e-4)
        by_pcm = engine.run(sample_pcm, uri="s", task=Task.DIARIZATION)
        by_float = engine.run(as_float, uri="s", task=Task.DIARIZATION)
        assert by_pcm.segments == by_float.segments and len(by_pcm.segments) > 5

    def test_silence_costs_no_network_pass(self, engine, sample_pcm):
        """Chunks where nobody speaks get no CAM++ pass and NaN embeddings; chunks of digital silence get the
        segmentation model's answer for silence without running it."""
        p = engine._pipeline
        seg_calls, feature_calls = [], []

        class Counting:
            facts = p.models.facts
            device = "cpu"
            segmentation_batch = 32

            def segment(self, chunks):
                seg_calls.append(len(chunks))
                return p.models.segment(chunks)

            def features(self, audio):
                feature_calls.append(len(audio))
                return p.models.features(audio)

            def pool(self, features, weights):
                return p.models.pool(features, weights)

        counted = Diarizer(Counting(), threshold=0.55)
        speech = sample_pcm[: 16000 * 10]
        waveform = np.concatenate([np.zeros(16000 * 60, np.int16), speech, np.zeros(16000 * 60, np.int16)])
        seg = counted.segment(waveform)
        # 121 chunks; only those touching the 10 s of speech (and the one silent pass) ran the model
        assert seg.data.shape[0] == 121 and sum(seg_calls) == 19 + 1  # chunks starting at 51-69 s
        assert not seg.data[:50].any() and not seg.data[71:].any()
        embeddings = counted.embed(waveform, seg)
        active = seg.data.sum(axis=1) > 0
        assert np.isnan(embeddings[~active]).all() and not np.isnan(embeddings[active]).any()
        # blocks 5-7 of 10 s (with their context) hold every active chunk: 2 batches of 2 blocks at most
        assert sum(feature_calls) <= 4

    def test_block_features_match_a_chunk_run_alone(self, engine, torch_models, sample_pcm):
        """A chunk cut from two blocks embeds close to the chunk run on its own (cosine 0.93 measured)."""
        blocks = BlockFeatures(engine._pipeline.models, sample_pcm, 10.0)
        cut = blocks.chunk(5.0)
        assert blocks.fps == 50 and cut.shape[-1] == 500
        alone = torch_models.features(to_float(sample_pcm[16000 * 5 : 16000 * 15])[None])
        ones = np.ones((1, 3, 589), np.float32)
        a = torch_models.pool(alone, ones)[0, 0]
        b = engine._pipeline.models.pool(cut[None].copy(), ones)[0, 0]
        assert cosine(a, b) > 0.9


class TestModels:
    def test_fbank_is_kaldis(self):
        """numpy's filterbank equals torchaudio's Kaldi-compatible one (CAM++'s training features)."""
        import torchaudio.compliance.kaldi as kaldi

        audio = (np.random.default_rng(2).standard_normal((2, 16000 * 3)) * 0.1).astype(np.float32)
        ours = campplus_features(audio)
        for i in range(2):
            fb = kaldi.fbank(torch.from_numpy(audio[i : i + 1] * 32768), num_mel_bins=80, dither=0.0)
            fb = (fb - fb.mean(dim=0, keepdim=True)).numpy().T
            np.testing.assert_allclose(ours[i], fb, atol=2e-3)

    def test_the_export_is_cached_and_survives_a_read_only_cache(self, tmp_path, monkeypatch):
        """The first load exports into the cache; the next reads it without torch; a cache that cannot be
        written still gives a working export (kept in memory)."""
        root = bundled_model_dir()
        seg, emb = root / BUNDLED_SEGMENTATION, root / BUNDLED_EMBEDDING
        first = bundled_models.cached_export(seg, emb, tmp_path / "cache")
        (folder,) = (tmp_path / "cache").iterdir()
        assert sorted(p.name for p in folder.iterdir()) == sorted(first)

        def no_export(*args):
            raise AssertionError("exported again")

        monkeypatch.setattr(bundled_models, "export", no_export)
        assert bundled_models.cached_export(seg, emb, tmp_path / "cache") == first
        monkeypatch.undo()
        blocked = tmp_path / "file"
        blocked.write_text("not a folder")
        files = bundled_models.cached_export(seg, emb, blocked / "cache")
        assert OnnxModels(files).facts.dimension == 192

    def test_prepare_models_fills_the_cache_and_names_a_broken_one(self, tmp_path):
        """``diarist prepare-models`` (what the set-up runs) exports into ``$XDG_CACHE_HOME/diarist/models``; a
        cache entry that ONNX Runtime cannot read is a model error naming that folder, exit 2."""
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
        cmd = [sys.executable, "-m", "diarist.daemon.cli", "prepare-models"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        cache = tmp_path / "xdg" / "diarist" / "models"
        assert done.returncode == 0, done.stderr
        assert "models ready on cpu" in done.stdout and str(cache) in done.stdout
        (entry,) = cache.iterdir()
        assert sorted(p.name for p in entry.iterdir()) == [
            "embedding.onnx", "facts.json", "pooling.onnx", "segmentation.onnx"
        ]  # fmt: skip
        (entry / "segmentation.onnx").write_bytes(b"not a model")
        broken = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert broken.returncode == 2, broken.stdout + broken.stderr
        assert "cannot load the bundled models" in broken.stderr and str(cache) in broken.stderr

    def test_a_checkpoint_change_is_a_new_cache_entry(self, tmp_path):
        a, b = tmp_path / "a.bin", tmp_path / "b.bin"
        a.write_bytes(b"one")
        b.write_bytes(b"two")
        assert bundled_models.checkpoint_key(a) != bundled_models.checkpoint_key(b)


class TestChunkStep:
    def test_step_by_duration(self):
        """pyannote's 0.1 for short files, 0.2 from LONG_FILE_SECONDS on."""
        assert segmentation_step(30.0) == 0.1
        assert segmentation_step(LONG_FILE_SECONDS - 1) == 0.1
        assert segmentation_step(LONG_FILE_SECONDS) == 0.2

    def test_each_file_gets_the_step_and_cluster_size_of_its_duration(self, engine):
        """A long file runs with the coarse step and half the minimum cluster size (it counts chunks); a short
        one with pyannote's own. The segmentation-only tasks cut the same chunks."""
        p = engine._pipeline
        short, long = p.chunks_for(16000 * 20), p.chunks_for(int(16000 * LONG_FILE_SECONDS))
        assert short.step == pytest.approx(1.0) and long.step == pytest.approx(2.0)
        assert min_cluster_size(short) == 12 and min_cluster_size(long) == 6
        quiet = np.zeros(int(16000 * (LONG_FILE_SECONDS + 5)), dtype=np.int16)
        assert p.segment(quiet).chunks == long and p.segment(quiet[: 16000 * 20]).chunks == short


class TestTrainingCap:
    def test_trains_on_an_even_subset_when_there_are_too_many(self):
        """Above the cap, the training set is evenly spread over the file, never more than the cap."""
        clustering = CannotLinkClustering(threshold=0.55, min_cluster_size=12)
        clustering.max_training = 50
        chunks, speakers = 400, 3
        embeddings = np.random.default_rng(0).normal(size=(chunks, speakers, 8)).astype(np.float32)
        segmentation = np.zeros((chunks, 100, speakers), dtype=np.float32)
        segmentation[:, :, 0] = 1.0  # speaker 0 alone and active in every chunk
        kept, chunk_idx, speaker_idx = clustering.filter_embeddings(embeddings, segmentation)
        assert len(kept) == 50 and set(speaker_idx) == {0}
        assert chunk_idx[0] == 0 and chunk_idx[-1] == chunks - 1
        assert np.all(np.diff(chunk_idx) > 0)

    def test_chunks_are_kept_whole(self):
        """Two people in every chunk: thinning keeps both embeddings of each chunk it keeps (together they
        say "two different people"), and stays under the cap."""
        clustering = CannotLinkClustering(threshold=0.55, min_cluster_size=12)
        clustering.max_training = 51
        chunks = 400
        embeddings = np.random.default_rng(1).normal(size=(chunks, 3, 8)).astype(np.float32)
        segmentation = np.zeros((chunks, 100, 3), dtype=np.float32)
        segmentation[:, :50, 0] = segmentation[:, 50:, 2] = 1.0
        kept, chunk_idx, speaker_idx = clustering.filter_embeddings(embeddings, segmentation)
        assert 40 <= len(kept) <= 51 and set(speaker_idx) == {0, 2}
        assert all(np.count_nonzero(chunk_idx == c) == 2 for c in np.unique(chunk_idx))

    def test_below_the_cap_nothing_changes(self):
        """Short files: every usable embedding trains the clustering, as in stock."""
        clustering = CannotLinkClustering(threshold=0.55, min_cluster_size=12)
        embeddings = np.ones((20, 3, 8), dtype=np.float32)
        segmentation = np.zeros((20, 100, 3), dtype=np.float32)
        segmentation[:, :, 1] = 1.0
        kept, _, speaker_idx = clustering.filter_embeddings(embeddings, segmentation)
        assert len(kept) == 20 and set(speaker_idx) == {1}
