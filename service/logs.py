"""Log output of `prm` commands: human-readable text, or one JSON object per line for log collectors."""

import json
import logging
import os
from datetime import UTC, datetime

from service.config import LogFormat, LogLevel

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields that service.api.middleware.RequestLog attaches to each access-log record.
ACCESS_FIELDS = ("method", "route", "status", "ms", "tokens", "request_id")


class JsonLines(logging.Formatter):
    """`{"time", "level", "logger", "message", ...}` per record; access-log fields as their own keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({field: getattr(record, field) for field in ACCESS_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: LogLevel = "info", log_format: LogFormat = "text") -> None:
    """One handler on the root logger, which uvicorn's loggers also reach (run it with `log_config=None`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to a vLLM upstream is noise


def process_rank() -> int:
    """This process's rank under torchrun or accelerate launch (which set RANK); 0 when run alone."""
    return int(os.environ.get("RANK", "0"))
