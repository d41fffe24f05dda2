"""diarist's cannot-link clustering (diarist.handlers.clustering) on synthetic embeddings: the rules, one by one.

Each "voice" is a random unit direction; its embeddings scatter around it. Chunk indices say which
embeddings the segmentation saw in the same 10-s chunk (different local speakers = different people).
"""

from __future__ import annotations

import numpy as np
import pytest

from diarist.handlers.clustering import (
    DISTINCT_MIN_SIZE,
    NEW_VOICE_SIMILARITY,
    SAME_SPEAKER_DISTANCE,
    SPLIT_MAX_SIZE,
    CannotLinkClustering,
    add_new_voices,
    unit,
)

DIM = 32


def clustering(threshold: float = 0.55, min_cluster_size: int = 1) -> CannotLinkClustering:
    return CannotLinkClustering(threshold=threshold, min_cluster_size=min_cluster_size)


def voice_pair(distance: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two unit directions ``distance`` apart (unit-vector Euclidean distance)."""
    a = unit(rng.normal(size=DIM))
    b = unit(rng.normal(size=DIM) - (rng.normal(size=DIM) @ a) * a)
    b = unit(b - (b @ a) * a)
    cos = 1 - distance**2 / 2
    return a, unit(cos * a + np.sqrt(1 - cos**2) * b)


def around(center: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.02) -> np.ndarray:
    return unit(center + spread * rng.normal(size=(n, DIM)))


class TestCannotLink:
    def test_close_voices_that_talk_in_the_same_chunks_stay_apart(self):
        """Two voices 0.62 apart (pyannote's sample): above the safe threshold, but they speak in the same
        chunks as different local speakers, so they are two people."""
        rng = np.random.default_rng(0)
        a, b = voice_pair(0.62, rng)
        x = np.vstack([around(a, 10, rng), around(b, 10, rng)])
        chunks = np.concatenate([np.arange(10), np.arange(10)])
        labels = clustering().cluster_with_links(x, chunks, max_clusters=10)
        assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]

    def test_one_voice_split_in_two_is_joined_when_the_halves_never_meet(self):
        """The same distance, but the two groups alternate in time and never share a chunk: one person
        heard in two ways."""
        rng = np.random.default_rng(1)
        a, b = voice_pair(0.62, rng)
        x = np.vstack([around(a, 10, rng), around(b, 10, rng)])
        chunks = np.concatenate([np.arange(0, 20, 2), np.arange(1, 20, 2)])
        labels = clustering().cluster_with_links(x, chunks, max_clusters=10)
        assert len(set(labels)) == 1

    def test_groups_heard_far_apart_in_time_prove_nothing(self):
        """Never sharing a chunk because one talks in the first minutes and the other an hour later is no
        sign of one voice: above the safe threshold they stay apart."""
        rng = np.random.default_rng(8)
        a, b = voice_pair(0.62, rng)
        x = np.vstack([around(a, 10, rng), around(b, 10, rng)])
        chunks = np.concatenate([np.arange(10), np.arange(3600, 3610)])
        assert len(set(clustering().cluster_with_links(x, chunks, max_clusters=10))) == 2

    def test_large_groups_are_not_halves_of_one_voice(self):
        """Centroids of big clusters are steady: two of them 0.62 apart are two voices even if the
        segmentation never put them in one chunk (long files)."""
        rng = np.random.default_rng(9)
        a, b = voice_pair(0.62, rng)
        n = SPLIT_MAX_SIZE + 1
        x = np.vstack([around(a, n, rng), around(b, n, rng)])
        chunks = np.concatenate([np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)])
        assert len(set(clustering().cluster_with_links(x, chunks, max_clusters=10))) == 2

    def test_far_voices_stay_apart_even_without_sharing_a_chunk(self):
        """Beyond SAME_SPEAKER_DISTANCE nothing merges, shared chunk or not."""
        rng = np.random.default_rng(2)
        a, b = voice_pair(SAME_SPEAKER_DISTANCE + 0.1, rng)
        x = np.vstack([around(a, 10, rng), around(b, 10, rng)])
        labels = clustering().cluster_with_links(x, np.arange(20), max_clusters=10)
        assert len(set(labels)) == 2

    def test_a_few_shared_chunks_are_segmentation_slips(self):
        """One shared chunk out of 20 does not make two people of one voice."""
        rng = np.random.default_rng(3)
        a, b = voice_pair(0.62, rng)
        x = np.vstack([around(a, 20, rng), around(b, 20, rng)])
        chunks = np.concatenate([np.arange(0, 40, 2), np.arange(1, 40, 2)])
        chunks[20] = 0
        labels = clustering().cluster_with_links(x, chunks, max_clusters=10)
        assert len(set(labels)) == 1

    def test_max_speakers_folds_in_the_voice_heard_least(self):
        """Three clear voices, at most two wanted: the one with the fewest embeddings joins its closest."""
        rng = np.random.default_rng(4)
        a, b = voice_pair(1.2, rng)
        c = unit(a + 0.9 * unit(rng.normal(size=DIM)))  # closer to a than to b
        x = np.vstack([around(a, 10, rng), around(b, 10, rng), around(c, 6, rng)])
        chunks = np.concatenate([np.arange(10), np.arange(10), np.arange(6)])
        assert len(set(clustering().cluster_with_links(x, chunks, max_clusters=10))) == 3
        labels = clustering().cluster_with_links(x, chunks, max_clusters=2)
        assert len(set(labels)) == 2 and labels[0] == labels[20] != labels[10]

    def test_a_voice_heard_once_at_length_is_a_speaker(self):
        """A small cluster (below the minimum size) that is unlike every other voice stays a speaker when
        it has DISTINCT_MIN_SIZE embeddings; a smaller stray group joins its closest voice."""
        rng = np.random.default_rng(7)
        a, b = voice_pair(1.2, rng)
        c = unit(rng.normal(size=DIM))
        for extra, speakers in ((DISTINCT_MIN_SIZE, 3), (DISTINCT_MIN_SIZE - 1, 2)):
            x = np.vstack([around(a, 30, rng), around(b, 30, rng), around(c, extra, rng)])
            chunks = np.concatenate([np.arange(30), np.arange(30), np.arange(extra)])
            labels = clustering(min_cluster_size=12).cluster_with_links(x, chunks, max_clusters=10)
            assert len(set(labels)) == speakers


class TestNewVoices:
    def test_a_count_adds_only_voices_unlike_every_found_one(self):
        rng = np.random.default_rng(5)
        a, b = voice_pair(1.3, rng)
        found = [a]
        like_a = around(a, 5, rng)
        assert len(add_new_voices(found, like_a, wanted=3)) == 1, "nothing unlike the one voice: nothing added"
        pool = np.vstack([like_a, around(b, 1, rng)])
        grown = add_new_voices(found, pool, wanted=3)
        assert len(grown) == 2 and float(unit(grown[1]) @ b) > 0.99
        assert NEW_VOICE_SIMILARITY > float(a @ b)


def test_whole_call_honours_counts_and_assigns_one_cluster_per_local_speaker():
    """Through pyannote's interface: (chunks, local speakers, dim) embeddings + binary segmentations in,
    hard clusters out; two local speakers of one chunk never share a cluster; num_clusters caps the count."""
    rng = np.random.default_rng(6)
    a, b = voice_pair(1.2, rng)
    chunks = 12
    emb = np.full((chunks, 3, DIM), np.nan, dtype=np.float32)
    emb[:, 0] = around(a, chunks, rng)
    emb[:, 1] = around(b, chunks, rng)
    seg = np.zeros((chunks, 100, 3), dtype=np.float32)
    seg[:, :50, 0] = 1.0
    seg[:, 50:, 1] = 1.0
    segmentations = seg
    hard, soft, centroids = clustering()(emb, segmentations)
    assert centroids.shape == (2, DIM) and soft.shape == (chunks, 3, 2)
    assert np.all(hard[:, 0] != hard[:, 1]) and len(set(hard[:, 0])) == 1
    hard, _, centroids = clustering()(emb, segmentations, num_clusters=1)
    assert centroids.shape == (1, DIM)


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_embeddings(n):
    """Files with (almost) no speech: one cluster or none, never an error."""
    emb = np.full((3, 3, DIM), np.nan, dtype=np.float32)
    seg = np.zeros((3, 100, 3), dtype=np.float32)
    if n:
        emb[0, 0] = unit(np.ones(DIM))
        seg[0, :, 0] = 1.0
    hard, _, centroids = clustering()(emb, seg)
    assert hard.shape == (3, 3) and len(centroids) == 1
