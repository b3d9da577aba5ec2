"""The Ray Jobs API as the gateway uses it: submit, look up, stop, read logs; nothing else of Ray.

Errors come out as two kinds: `RayUnavailable` (cannot reach the cluster, it answered 5xx, or it
refused our token: try again later) and `RayRefused` (the cluster rejected the request itself).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import requests
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

# JobSubmissionClient prefers these variables to the address it is given; the gateway's setting wins.
_ADDRESS_OVERRIDES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_env_lock = threading.Lock()


class RayUnavailable(RuntimeError):
    pass


class RayRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class RayJobInfo:
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str | None

    @property
    def terminal(self) -> bool:
        return self.status in ("STOPPED", "SUCCEEDED", "FAILED")


def _status_code(error: RuntimeError) -> int | None:
    # The SDK reports HTTP errors as RuntimeError("Request failed with status code 404: ...").
    text = str(error)
    marker = "status code "
    if marker in text:
        digits = text.split(marker, 1)[1][:3]
        if digits.isdigit():
            return int(digits)
    return None


class RayJobs:
    """A lazily connected Jobs API client for one cluster; reconnects after a failure."""

    def __init__(self, address: str, token: str | None = None):
        self.address = address
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client: JobSubmissionClient | None = None
        self._lock = threading.Lock()

    def _connect(self) -> JobSubmissionClient:
        with self._lock:
            if self._client is None:
                with _env_lock:
                    hidden = {k: os.environ.pop(k) for k in _ADDRESS_OVERRIDES if k in os.environ}
                    try:
                        self._client = JobSubmissionClient(self.address, headers=self.headers)
                    except (ConnectionError, requests.RequestException) as e:
                        raise RayUnavailable(f"cannot reach the Ray Jobs API at {self.address}: {e}") from None
                    except AuthenticationError as e:
                        raise RayUnavailable(f"the Ray Jobs API at {self.address} refused the token: {e}") from None
                    finally:
                        os.environ.update(hidden)
            return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._connect()
        try:
            return getattr(client, method)(*args, **kwargs)
        except (ConnectionError, requests.RequestException) as e:
            self._client = None
            raise RayUnavailable(f"cannot reach the Ray Jobs API at {self.address}: {e}") from None
        except AuthenticationError as e:
            self._client = None
            raise RayUnavailable(f"the Ray Jobs API at {self.address} refused the token: {e}") from None
        except RuntimeError as e:
            code = _status_code(e)
            if code is not None and code >= 500:
                raise RayUnavailable(f"the Ray Jobs API at {self.address} failed: {e}") from None
            raise RayRefused(str(e)) from None

    def ping(self) -> None:
        """Raise RayUnavailable unless the Jobs API answers an authenticated request (a cheap lookup)."""
        self.info("prime-ray-readiness-probe")

    def info(self, submission_id: str) -> RayJobInfo | None:
        """The job's status, or None if the cluster has no job with that submission id."""
        try:
            details = self._call("get_job_info", submission_id)
        except RayRefused as e:
            if "404" in str(e) or "does not exist" in str(e):
                return None
            raise
        return RayJobInfo(status=str(details.status.value), message=details.message)

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        """Submit a shell entrypoint. No runtime_env: the driver's own `ray.init(runtime_env=...)` must
        not conflict with one set here (Ray refuses to merge the same variable from both)."""
        self._call("submit_job", entrypoint=entrypoint, submission_id=submission_id, metadata=metadata)

    def stop(self, submission_id: str) -> None:
        self._call("stop_job", submission_id)

    def logs(self, submission_id: str) -> str:
        return self._call("get_job_logs", submission_id)
