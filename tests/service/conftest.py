"""Every gateway test module is watched: after its tests, the gateway's log and uvicorn's hold no
unhandled exception (a client's mistake answered with a 500, a request that broke the server, a
follower that crashed). Gateways run as subprocesses are checked through their log files instead."""

from __future__ import annotations

import logging

import pytest

WATCHED = ("prime_ray.gateway", "uvicorn.error", "uvicorn.asgi")


class ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module", autouse=True)
def no_unhandled_exceptions():
    errors = ErrorRecords()
    loggers = [logging.getLogger(name) for name in WATCHED]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        yield errors
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    assert errors.records == [], "the gateway logged unhandled exceptions"
