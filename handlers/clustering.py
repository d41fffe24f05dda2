"""Speaker clustering for the bundled engine: agglomerative, told by the segmentation who cannot be the same.

pyannote's pipeline embeds each (chunk, local speaker) and clusters those embeddings across the file. Its
agglomerative clustering merges clusters while their centroids are closer than one threshold, and with the
bundled CAM++ embeddings no single threshold fits real recordings: two different people in pyannote's sample
sit at a centroid distance of about 0.62, while one AMI meeting participant often splits into clusters 0.65-0.75
apart (measured on the dev set, ``benchmarks/accuracy.py``). A threshold low enough to keep the sample's two
people apart over-splits meetings; one high enough for meetings merges the sample into one speaker.

The segmentation model knows something the embeddings do not: local speakers of one 10-s chunk are different
people. Two clusters that both own an embedding of the same chunk are therefore two people ("cannot link").
So clustering goes in two stages:

1. centroid-linkage AHC up to ``threshold`` (0.55): merges that are safe whoever the speakers are;
2. then, closest pair first, clusters keep merging up to ``SAME_SPEAKER_DISTANCE`` (0.8) as long as no chunk
   holds both (up to ``LINK_SLIPS`` of them: the segmentation sometimes splits one voice) although they talk
   close in time (``NEAR_FRACTION`` of the smaller one's chunks within a chunk's reach of the other's); other
   pairs merge only below ``threshold``. Two people who talk near each other share chunks; one voice split in
   two never does; two people heard hours apart prove nothing either way.

Speaker counts, when given, are honoured without damage:

* at most ``max_speakers`` (or ``num_speakers``): the speaker heard least joins the closest other one, until
  the count fits;
* at least ``min_speakers`` (or ``num_speakers``): a speaker is added only from speech whose voice is unlike
  every speaker found (cosine similarity below ``NEW_VOICE_SIMILARITY`` to each centroid), farthest first.
  Forcing the count by splitting a found voice in two (what stock pyannote does) made the dev set's mean DER
  0.09 worse with the true count than without it; the true count of a meeting includes people who say a few
  words, and their words are too short for an embedding to tell them apart.

Then every embedding goes to its closest centroid, one cluster per local speaker of a chunk (Hungarian
assignment), as pyannote's VBx clustering does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.ndimage import maximum_filter1d

#: clusters that never share a chunk merge while their centroids are closer than this (unit-vector
#: Euclidean distance; 0.8 is cosine similarity 0.68). Dev set: 0.75-0.9 give the same DER within 0.002.
SAME_SPEAKER_DISTANCE = 0.8
#: a small cluster this large (chunks with 2 s of one voice alone) that is unlike every large one stays a speaker.
#: Built conversations of real voices: a voice heard in one 7.5-s turn gave 6; the segmentation giving one
#: person two local slots in a few chunks gave stray groups of 3-4.
DISTINCT_MIN_SIZE = 5
#: co-occurring in at most this fraction of the smaller cluster's chunks does not forbid a merge
LINK_SLIPS = 0.1
#: the smaller of two clusters must have this fraction of its chunks within reach of the other's for "never
#: in one chunk" to count as "one voice"
NEAR_FRACTION = 0.5
#: only clusters this small (chunks) can be halves of one voice: centroids of larger ones are steady (a 4-hour
#: generated recording had two synthetic voices 0.6 apart, 849 and 1,446 chunks, that the segmentation never
#: told apart within a chunk)
SPLIT_MAX_SIZE = 100
#: with a speaker count to reach, speech this unlike every found speaker (cosine similarity) may seed one more
NEW_VOICE_SIMILARITY = 0.5
#: at most this many embeddings train the clustering; the rest are assigned to its centroids (as pyannote
#: already does for the embeddings it filters out). Pairwise distances of 5,000 are 100 MB; the ~30,000 of a
#: 4-hour meeting would be 3.6 GB.
MAX_TRAINING_EMBEDDINGS = 5000


def unit(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)


class CannotLinkClustering:
    """Two-stage agglomerative clustering with cannot-link constraints from the segmentation (module doc).

    ``threshold`` is the stage-1 (always safe) distance, ``min_cluster_size`` the size below which a cluster is
    absorbed by the closest larger one (pyannote's ``AgglomerativeClustering`` calls them the same).
    """

    max_training = MAX_TRAINING_EMBEDDINGS

    def __init__(self, threshold: float, min_cluster_size: int):
        self.threshold = threshold
        self.min_cluster_size = min_cluster_size

    def __call__(
        self,
        embeddings: np.ndarray,
        segmentations: np.ndarray,
        *,
        reach: int = 10,
        num_clusters: int | None = None,
        min_clusters: int | None = None,
        max_clusters: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hard clusters (chunks, local speakers; -2 for none), soft scores and centroids for
        ``embeddings`` (chunks, local speakers, dimension; NaN for silent ones) of the 0/1 ``segmentations``
        (chunks, frames, local speakers). ``reach``: how many chunk steps one chunk spans."""
        num_chunks, num_speakers, dimension = embeddings.shape
        valid = ~np.isnan(embeddings).any(axis=2)
        if not valid.any():
            return (
                np.zeros((num_chunks, num_speakers), dtype=np.int8),
                np.ones((num_chunks, num_speakers, 1)),
                np.zeros((1, dimension)),
            )
        train, chunk_idx, _ = self.filter_embeddings(embeddings, segmentations)
        if len(train) < 2:  # too little clean speech anywhere: train on every valid embedding
            chunk_idx, speaker_idx = np.where(valid)
            train = embeddings[chunk_idx, speaker_idx]
        num_clusters, min_clusters, max_clusters = cluster_bounds(
            int(valid.sum()), num_clusters=num_clusters, min_clusters=min_clusters, max_clusters=max_clusters
        )
        x = unit(train)
        labels = self.cluster_with_links(x, chunk_idx, max_clusters, reach=reach)
        centroids = [x[labels == k].mean(axis=0) for k in range(labels.max() + 1)]
        centroids = add_new_voices(centroids, unit(embeddings[valid]), min_clusters)
        c = unit(np.stack(centroids))
        soft = unit(embeddings.reshape(-1, dimension)) @ c.T + 1.0  # 2 - cosine distance, as pyannote's
        soft = soft.reshape(num_chunks, num_speakers, -1)
        ranked = np.nan_to_num(soft, nan=-1.0)
        ranked[np.sum(segmentations, axis=1) == 0] = -1.0  # silent local speakers choose last
        return constrained_argmax(ranked), soft, c

    def filter_embeddings(
        self, embeddings: np.ndarray, segmentations: np.ndarray, min_active_ratio: float = 0.2
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """pyannote's choice of training embeddings (2 s or more of a speaker alone in the chunk), thinned on
        long files to at most ``max_training`` by keeping evenly spread chunks whole: the embeddings of one
        chunk together are what tells the clustering who cannot be the same person."""
        single = np.sum(segmentations, axis=2, keepdims=True) == 1
        clean = np.sum(segmentations * single, axis=1)
        usable = (clean >= min_active_ratio * segmentations.shape[1]) & ~np.any(np.isnan(embeddings), axis=2)
        chunk_idx, speaker_idx = np.where(usable)
        kept = embeddings[chunk_idx, speaker_idx]
        if len(kept) <= self.max_training:
            return kept, chunk_idx, speaker_idx
        chunks = np.unique(chunk_idx)
        share = max(1, int(len(chunks) * self.max_training / len(kept)))
        while True:
            picked = chunks[np.unique(np.linspace(0, len(chunks) - 1, share).round().astype(int))]
            pick = np.flatnonzero(np.isin(chunk_idx, picked))
            if len(pick) <= self.max_training or share == 1:
                return kept[pick], chunk_idx[pick], speaker_idx[pick]
            share = max(1, share - max(1, share // 50))

    def cluster_with_links(
        self, x: np.ndarray, chunk_idx: np.ndarray, max_clusters: int | float, reach: int = 10
    ) -> np.ndarray:
        """Labels 0..k-1 for unit vectors ``x`` whose chunks are ``chunk_idx`` (module doc, stages 1-2);
        ``reach``: how many chunk steps one chunk spans (its neighbours within that share audio with it)."""
        n = len(x)
        if n < 2:
            return np.zeros(n, dtype=int)
        dendrogram = linkage(x, method="centroid", metric="euclidean")
        labels = np.unique(fcluster(dendrogram, self.threshold, criterion="distance"), return_inverse=True)[1]
        labels = self._merge(x, labels, chunk_idx, reach)
        labels = absorb_small(x, labels, min(int(self.min_cluster_size), max(1, round(0.1 * n))))
        while labels.max() + 1 > max_clusters:  # too many speakers: the one heard least joins its closest
            sizes = np.bincount(labels)
            smallest = int(np.argmin(sizes))
            c = centroids_of(x, labels)
            similarity = c @ c[smallest]
            similarity[smallest] = -np.inf
            labels[labels == smallest] = int(np.argmax(similarity))
            labels = np.unique(labels, return_inverse=True)[1]
        return labels

    def _merge(self, x: np.ndarray, labels: np.ndarray, chunk_idx: np.ndarray, reach: int) -> np.ndarray:
        """Merge the closest allowed pair of clusters until no pair is allowed (module doc, stage 2)."""
        span = int(chunk_idx.max()) + 1
        while labels.max() > 0:
            k = labels.max() + 1
            members = np.zeros((k, span))
            members[labels, chunk_idx] = 1.0
            # clusters that both speak in a chunk are two people; a few such chunks may be the segmentation
            # splitting one voice, which long files make likely somewhere
            together = members @ members.T
            size = members.sum(axis=1)
            smaller = np.minimum(size[:, None], size[None, :])
            shared = together > LINK_SLIPS * smaller
            # never sharing a chunk says "one voice" only where the two talk close in time (within a chunk's
            # reach of each other): people heard in different parts of a long recording say nothing
            around = maximum_filter1d(members, size=2 * reach + 1, axis=1, mode="constant")
            near = members @ around.T  # [i, j]: chunks of i with some chunk of j within reach
            near_frac = np.where(size[:, None] <= size[None, :], near, near.T) / np.maximum(smaller, 1)
            interleaved = near_frac >= NEAR_FRACTION
            # centroids of large clusters are steady: a voice splits into two only where there is little of it
            interleaved &= smaller <= SPLIT_MAX_SIZE
            c = centroids_of(x, labels)
            distance = np.sqrt(np.clip(2.0 - 2.0 * c @ c.T, 0.0, None))
            limit = np.where(~shared & interleaved, SAME_SPEAKER_DISTANCE, self.threshold)
            candidates = np.where(distance < limit, distance, np.inf)
            np.fill_diagonal(candidates, np.inf)
            i, j = np.unravel_index(np.argmin(candidates), candidates.shape)
            if not np.isfinite(candidates[i, j]):
                break
            labels[labels == max(i, j)] = min(i, j)
            labels = np.unique(labels, return_inverse=True)[1]
        return labels


def centroids_of(x: np.ndarray, labels: np.ndarray, which: Any = None) -> np.ndarray:
    """Unit-length mean of each cluster's vectors (clusters ``which``, default all 0..max), one row each."""
    which = range(labels.max() + 1) if which is None else which
    return unit(np.stack([x[labels == k].mean(axis=0) for k in which]))


def absorb_small(x: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Clusters smaller than ``min_size`` join the closest large one (pyannote's rule), unless they hold at
    least ``DISTINCT_MIN_SIZE`` embeddings and are unlike every large one (farther than
    ``SAME_SPEAKER_DISTANCE``): someone who talks once, at length, is a speaker too. Labels renumbered."""
    found, counts = np.unique(labels, return_counts=True)
    large = found[counts >= min_size]
    if len(large) == 0:
        return np.zeros_like(labels)
    centroids = centroids_of(x, labels, large)
    out = labels.copy()
    for k, count in zip(found, counts, strict=True):
        if count >= min_size:
            continue
        similarity = centroids @ unit(x[labels == k].mean(axis=0))
        distance = np.sqrt(max(0.0, 2.0 - 2.0 * float(similarity.max())))
        if count >= DISTINCT_MIN_SIZE and distance > SAME_SPEAKER_DISTANCE:
            continue
        out[labels == k] = large[np.argmax(similarity)]
    return np.unique(out, return_inverse=True)[1]


def add_new_voices(centroids: list[np.ndarray], pool: np.ndarray, wanted: int) -> list[np.ndarray]:
    """Up to ``wanted`` centroids: each added one is the pooled embedding least like every centroid so far,
    if it is unlike all of them (below ``NEW_VOICE_SIMILARITY``)."""
    centroids = list(centroids)
    while len(centroids) < wanted and len(pool):
        similarity = (pool @ unit(np.stack(centroids)).T).max(axis=1)
        farthest = int(np.argmin(similarity))
        if similarity[farthest] >= NEW_VOICE_SIMILARITY:
            break
        centroids.append(pool[farthest])
    return centroids


def cluster_bounds(
    num_embeddings: int,
    num_clusters: int | None = None,
    min_clusters: int | None = None,
    max_clusters: float | None = None,
) -> tuple[int | None, int, int]:
    """pyannote's ``set_num_clusters``: (exact or None, minimum, maximum), within what the embeddings allow."""
    low = max(1, min(num_embeddings, num_clusters or min_clusters or 1))
    high = int(max(1, min(num_embeddings, num_clusters or max_clusters or num_embeddings)))
    if low > high:
        raise ValueError(f"min_clusters ({low}) is more than max_clusters ({high})")
    return (low if low == high else num_clusters), low, high


def constrained_argmax(scores: np.ndarray) -> np.ndarray:
    """(chunks, local speakers) clusters: per chunk, the assignment of local speakers to distinct clusters
    with the highest total score (Hungarian; pyannote's ``constrained_argmax``); -2 where none is left."""
    from scipy.optimize import linear_sum_assignment

    scores = np.nan_to_num(scores, nan=np.nanmin(scores))
    hard = -2 * np.ones(scores.shape[:2], dtype=np.int8)
    for c, cost in enumerate(scores):
        speakers, clusters = linear_sum_assignment(cost, maximize=True)
        hard[c, speakers] = clusters
    return hard
