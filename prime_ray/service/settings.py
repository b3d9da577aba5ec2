"""Gateway configuration: one place, read from `PRIME_RAY_*` environment variables or CLI options.

| variable                     | meaning                                            | default                       |
|------------------------------|----------------------------------------------------|-------------------------------|
| PRIME_RAY_HOST               | address the gateway listens on                     | 127.0.0.1                     |
| PRIME_RAY_PORT               | port the gateway listens on                        | 8000                          |
| PRIME_RAY_DB_URL             | SQLAlchemy URL of the job database                 | sqlite:///<cache>/gateway.db  |
| PRIME_RAY_DB_RETRY_S         | how long a database operation is retried           | 30                            |
| PRIME_RAY_LEASE_S            | how long a gateway holds a job without renewing it | 30                            |
| PRIME_RAY_RAY_ADDRESS        | Ray dashboard / Jobs API address                   | http://127.0.0.1:8265         |
| PRIME_RAY_RAY_TOKEN_FILE     | Ray's auth token (sent as a bearer token)          | ~/.ray/auth_token if present  |
| PRIME_RAY_ARTIFACT_ROOT      | where jobs write artifacts (path or URI)           | <cache>/jobs                  |
| PRIME_RAY_MAX_BODY_BYTES     | largest request body accepted                      | 1048576                       |
| PRIME_RAY_POLL_INTERVAL_S    | how often running jobs are polled in Ray           | 1.0                           |
| PRIME_RAY_SESSION_SECRET     | signs the web console's session cookies            | random per process            |
| PRIME_RAY_JOB_PYTHON         | Python that runs a job on the Ray head             | the gateway's own Python      |
| PRIME_RAY_SERVE_HOST         | address of Ray Serve's HTTP proxy (served students)| 127.0.0.1                     |
| PRIME_RAY_SERVE_PORT         | port of Ray Serve's HTTP proxy                     | 8100                          |
| PRIME_RAY_PREDICT_TIMEOUT_S  | longest wait for a served student's answer         | 300                           |
| PRIME_RAY_URL / PRIME_RAY_API_KEY | the SDK and CLI client's gateway and key      | http://127.0.0.1:8000 / none  |

Several gateways may share one Postgres database (each follows the jobs it holds a lease on); on
SQLite, run one gateway per database file.

The artifact root must be a directory the gateway can read (a local path, or a shared mount that the
Ray head writes to): the gateway serves events and artifacts from it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from prime_ray.paths import cache_dir

# Variables a job's runner needs to find the same caches and offline switches as the gateway.
FORWARDED_ENV = ("PRIME_RAY_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_EXTENSIONS_DIR")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRIME_RAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    db_url: str = Field(default_factory=lambda: f"sqlite:///{cache_dir() / 'gateway.db'}",
                        description="SQLAlchemy URL of the job database: a SQLite file, or "
                                    "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB for several gateways.")
    db_retry_s: float = Field(30.0, ge=0, description="Seconds an idempotent database operation is retried "
                                                      "(exponential backoff) while the database is unreachable.")
    lease_s: float = Field(30.0, gt=0, description="Seconds a gateway's claim on a job lasts without renewal (it "
                                                   "renews every poll): a dead gateway's jobs are taken over after it.")
    ray_address: str = "http://127.0.0.1:8265"
    ray_token_file: str | None = None
    artifact_root: str = Field(default_factory=lambda: str(cache_dir("jobs")))
    max_body_bytes: int = Field(1 << 20, gt=0)
    poll_interval_s: float = Field(1.0, gt=0, description="Seconds between two polls of the active jobs.")
    session_secret: str = Field(
        default_factory=lambda: secrets.token_urlsafe(32), min_length=16,
        description="Key that signs the console's session cookies. Gateways behind one load balancer need the "
                    "same value; the default (random per process) logs console users out on a restart.",
    )
    job_python: str = Field(default_factory=lambda: sys.executable, description="Python of a job's entrypoint.")
    serve_host: str = Field("127.0.0.1", description="Where Ray Serve's HTTP proxy listens (on the Ray head).")
    serve_port: int = Field(8100, ge=1, le=65535, description="Ray Serve's HTTP proxy port for served students.")
    predict_timeout_s: float = Field(300.0, gt=0, description="Longest wait for a served student's answer.")

    @model_validator(mode="after")
    def _lease_outlasts_polls(self) -> GatewaySettings:
        if self.lease_s < 2 * self.poll_interval_s:
            raise ValueError(f"lease_s ({self.lease_s}) must be at least twice poll_interval_s "
                             f"({self.poll_interval_s}): leases are renewed once per poll")
        return self

    @field_validator("artifact_root")
    @classmethod
    def _local_root(cls, root: str) -> str:
        if "://" in root and not root.startswith("file://"):
            raise ValueError(
                f"artifact_root {root!r}: the gateway serves artifacts from a directory it can read; "
                "mount the shared storage and give its path"
            )
        return str(Path(root.removeprefix("file://")).expanduser().resolve())

    def ray_token(self) -> str | None:
        """Ray's token: the configured file, else Ray's own sources (RAY_AUTH_TOKEN[_PATH], ~/.ray/auth_token)."""
        if self.ray_token_file:
            return Path(self.ray_token_file).expanduser().read_text().strip()
        if os.environ.get("RAY_AUTH_TOKEN"):
            return os.environ["RAY_AUTH_TOKEN"].strip()
        for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
            if candidate and Path(candidate).is_file():
                return Path(candidate).read_text().strip()
        return None

    def job_env(self) -> dict[str, str]:
        """Environment a job's runner gets on top of the Ray head's."""
        return {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}

    def entrypoint(self, module: str, *args: str) -> str:
        """A Ray job's shell entrypoint: `python -m module args` with the job environment before it.

        The variables go on the command line (the entrypoint runs in a shell), not in a runtime_env.
        """
        env = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(self.job_env().items()))
        command = " ".join(shlex.quote(part) for part in (self.job_python, "-m", module, *args))
        return f"{env} {command}" if env else command
