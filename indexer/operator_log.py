"""The indexer's log for operators (runs started and ended with their counts, interrupted runs, unreadable
folders, fallbacks) on standard error, written between the lines of the progress bars rather than across them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.contrib.logging import logging_redirect_tqdm

LOG_LEVEL_ENV = "DINOSCOPE_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def indexer_log_on_stderr() -> Iterator[None]:
    """While this lasts, the indexer's records at $DINOSCOPE_LOG_LEVEL (default INFO) and above go to stderr."""
    logger = logging.getLogger("indexer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    previous_level = logger.level
    asked = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logger.addHandler(handler)
    try:
        with logging_redirect_tqdm([logger]):
            try:
                logger.setLevel(asked)
            except ValueError:
                logger.setLevel(logging.INFO)
                logger.warning("%s=%s is not a log level (DEBUG, INFO, WARNING, ERROR): logging at INFO",
                               LOG_LEVEL_ENV, asked)
            yield
    finally:
        logger.setLevel(previous_level)
        logger.removeHandler(handler)
