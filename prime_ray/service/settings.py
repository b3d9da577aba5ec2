"""Gateway configuration: one place, read from `PRIME_RAY_*` environment variables or CLI options.

| variable                     | meaning                                            | default                       |
|------------------------------|----------------------------------------------------|-------------------------------|
| PRIME_RAY_HOST               | address the gateway listens on                     | 127.0.0.1                     |
| PRIME_RAY_PORT               | port the gateway listens on                        | 8000                          |
| PRIME_RAY_DB_URL             | SQLAlchemy URL of the job database                 | sqlite:///<cache>/gateway.db  |
| PRIME_RAY_RAY_ADDRESS        | Ray dashboard / Jobs API address                   | http://127.0.0.1:8265         |
| PRIME_RAY_RAY_TOKEN_FILE     | Ray's auth token (sent as a bearer token)          | ~/.ray/auth_token if present  |
| PRIME_RAY_ARTIFACT_ROOT      | where jobs write artifacts (path or URI)           | <cache>/jobs                  |
| PRIME_RAY_MAX_BODY_BYTES     | largest request body accepted                      | 1048576                       |
| PRIME_RAY_URL / PRIME_RAY_API_KEY | the SDK and CLI client's gateway and key      | http://127.0.0.1:8000 / none  |
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from prime_ray.paths import cache_dir


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRIME_RAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    db_url: str = Field(default_factory=lambda: f"sqlite:///{cache_dir() / 'gateway.db'}")
    ray_address: str = "http://127.0.0.1:8265"
    ray_token_file: str | None = None
    artifact_root: str = Field(default_factory=lambda: str(cache_dir("jobs")))
    max_body_bytes: int = 1 << 20
