"""Structured JSON logs for the serving app, with request ids, to stderr and to rotating files."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields (request_id, route, status...) become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_dir: Path | None, level: int = logging.INFO, max_bytes: int = 20 << 20) -> None:
    """Send the ``genart`` loggers to stderr (which Ray keeps per replica) and, when ``log_dir`` is set, to
    ``log_dir/genart-serve-<pid>.jsonl`` rotated at ``max_bytes`` (5 backups); one file per process, since
    several processes must not rotate one file. Safe to call again."""
    logger = logging.getLogger("genart")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_genart", False):
            logger.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        path = Path(log_dir) / f"genart-serve-{os.getpid()}.jsonl"
        handlers.append(RotatingFileHandler(path, maxBytes=max_bytes, backupCount=5))
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        handler._genart = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
