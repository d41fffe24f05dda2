"""The process: configuration, watcher, ledger, service loop and the ``diarist`` CLI."""

__all__: list[str] = []
