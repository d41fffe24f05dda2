"""What happens to one file: intake, decoding, the local engine, result writers."""

from diarist.handlers.errors import (
    ConfigError,
    DiaristError,
    ModelError,
    PermanentFileError,
    ToolMissingError,
    TransientError,
)

__all__ = ["ConfigError", "DiaristError", "ModelError", "PermanentFileError", "ToolMissingError", "TransientError"]
