"""`prime-ray ask` on a job's folder: the student loaded in-process answers, or says what is wrong."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from prime_ray.cli import app


def test_ask_answers_from_a_job_folder_and_names_unknown_users(served_job):
    runner = CliRunner()
    result = runner.invoke(app, ["ask", str(served_job), "--user", "u0", "Heat (1995) | Action", "--json",
                                 "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout[result.stdout.index("{"):])
    assert answer["user_id"] == "u0" and answer["adapter"] == "prime" and answer["mode"] == "personal-think"
    assert answer["episodes"] and answer["completion_tokens"] <= 6

    shown = runner.invoke(app, ["ask", str(served_job), "-u", "u0", "Heat (1995) | Action", "-a", "generalist",
                                "--max-new-tokens", "6"])
    assert shown.exit_code == 0 and "served/generalist (personal-think) for user u0" in shown.stdout
    assert "memory given" in shown.stdout and "answer:" in shown.stdout

    unknown = runner.invoke(app, ["ask", str(served_job), "--user", "nobody", "x"])
    assert unknown.exit_code == 2 and "no user 'nobody' (its users: u0, u1, u2, u3)" in unknown.stderr
