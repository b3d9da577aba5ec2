"""The student app on a real local Ray Serve: requests of several users and adapters meet in one
replica's batch, a caller's mistake comes back as the serving error it is, and appended history
reaches the replica through the job's folder. Over HTTP through Serve's proxy, the same."""

from __future__ import annotations

import httpx
import pytest

from prime_ray.serving.schemas import HistoryAppend, HistoryItemIn, PredictRequest
from prime_ray.serving.student import NotFoundError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_one_replica_batches_users_and_adapters_and_answers_over_http(ray_local, served_job):
    from prime_ray.distributed.student import student
    from prime_ray.service.local import free_port

    port = free_port()
    with student(served_job, http_port=port, max_batch_size=8, batch_wait_timeout_s=0.5,
                 num_cpus_per_replica=1) as s:
        info = s.info()
        assert info.adapters == ["prime", "fast", "generalist"] and info.users == 4
        users = sorted(info_user for info_user in _users(served_job))
        requests = [PredictRequest(user_id=u, input="Heat (1995) | Action", adapter=a, max_new_tokens=6)
                    for u in users[:2] for a in ("prime", "fast", "generalist")]
        answers = s.predict(requests)
        assert [(a.user_id, a.adapter) for a in answers] == [(r.user_id, r.adapter) for r in requests]
        assert max(s.served_batch_sizes()) > 1  # several users and adapters in one engine batch
        assert {a.mode for a in answers} == {"personal-think", "direct"}

        with pytest.raises(NotFoundError, match="no adapter 'slow'"):
            s.predict([PredictRequest(user_id=users[0], input="x", adapter="slow")])

        base = f"http://127.0.0.1:{port}/students/served"
        answer = httpx.post(f"{base}/predict", json={"user_id": users[0], "input": "Heat (1995) | Action",
                                                    "max_new_tokens": 6}, timeout=120)
        assert answer.status_code == 200 and answer.json()["text"] == answers[0].text  # greedy: the same text
        missing = httpx.post(f"{base}/predict", json={"user_id": "nobody", "input": "x"}, timeout=60)
        assert missing.status_code == 404 and "no user 'nobody'" in missing.json()["detail"]
        assert missing.json()["problems"] == [{"path": "user_id", "message": "unknown user"}]

        added = s.append_history(users[1], HistoryAppend(items=[HistoryItemIn(id="new-1", input="Zardoz Oddity", output="1")]))
        assert added.added == ["new-1"]
        [after] = s.predict([PredictRequest(user_id=users[1], input="Zardoz Oddity", max_new_tokens=4)])
        assert after.episodes[0].id == "new-1"


def _users(job_dir):
    from prime_ray.data.store import read_users

    return list(read_users(job_dir / "ingest" / "users.parquet"))
