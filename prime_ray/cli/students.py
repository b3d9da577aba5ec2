"""`prime-ray ask JOB --user U "input"` and `prime-ray serve JOB`: use a finished job's trained student.

JOB is a job's artifact folder (`artifacts/demo` after `make demo`): `ask` then loads the student in
this process, `serve` deploys it on an embedded Ray behind Serve's HTTP proxy. Anything else is taken
as a job id on a gateway (`--url`, PRIME_RAY_URL), whose deployed student `ask` calls through the SDK.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import typer
from rich.table import Table

from prime_ray.cli.jobs import API_KEY, URL, _client
from prime_ray.cli.text import err_console, out_console, plain, say


def _is_job_dir(job: str) -> bool:
    return (Path(job) / "spec.json").is_file()


def ask(
    job: str = typer.Argument(..., help="A job's artifact folder, or a job id on the gateway."),
    text: str = typer.Argument(..., metavar="INPUT", help="The input to answer for the user."),
    user: str = typer.Option(..., "--user", "-u", help="The user whose memory is used."),
    adapter: str = typer.Option("prime", "--adapter", "-a", help="prime, fast or generalist."),
    mode: str | None = typer.Option(None, "--mode", "-m", help="personal-think (default), direct, think."),
    history: Path | None = typer.Option(None, "--history", help="A new user's history: JSON list of "
                                                                   "{input, output} items."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Default: the job's eval setting."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole answer as JSON."),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Ask a trained student about a user: its reasoning, its answer, and the memory it was given."""
    from prime_ray.serving.schemas import HistoryItemIn, PredictRequest

    err = err_console()
    items = None
    if history is not None:
        try:
            items = [HistoryItemIn.model_validate(i) for i in json.loads(history.read_text())]
        except (OSError, ValueError) as e:
            say(err, plain(f"{history}: not a JSON list of history items: {e}", "red"))
            raise typer.Exit(2) from None
    if _is_job_dir(job):
        from prime_ray.serving.student import ServedStudent, ServingError

        student = ServedStudent.load(job)
        try:
            [answer] = student.predict([PredictRequest(user_id=user, input=text, adapter=adapter, mode=mode,
                                                       history=items, max_new_tokens=max_new_tokens)])
        except ServingError as e:
            say(err, plain(e.detail, "red"))
            raise typer.Exit(2) from None
        finally:
            student.close()
    else:
        with _client(url, api_key) as client:
            answer = client.predict(job, user, text, adapter=adapter, mode=mode, history=items,
                                    max_new_tokens=max_new_tokens)
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    out = out_console()
    say(out, plain(f"{answer.job_id}/{answer.adapter}", "bold"), f" ({answer.mode}) for user ",
        plain(answer.user_id, "bold"))
    if answer.profile:
        say(out, plain("profile: ", "dim"), answer.profile)
    if answer.episodes:
        table = Table("episode", "input", "output", "score", title="memory given", title_justify="left")
        for episode in answer.episodes:
            table.add_row(plain(episode.id), plain(episode.input), plain(episode.output), f"{episode.score:.2f}")
        out.print(table)
    if answer.trace:
        say(out, plain("thinking: ", "dim"), answer.trace)
    shown = answer.answer if answer.answer is not None else f"(none parsed: {answer.parse_error})"
    say(out, plain("answer: ", "bold green"), shown)
    say(out, plain(f"{answer.prompt_tokens} prompt + {answer.completion_tokens} new tokens", "dim"))


def serve(
    job: Path = typer.Argument(..., help="A finished job's artifact folder (e.g. artifacts/demo)."),
    port: int = typer.Option(8100, "--port", help="Ray Serve's HTTP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Ray Serve's HTTP address."),
) -> None:
    """Serve a job's student on an embedded Ray and print its URL; Ctrl-C stops it."""
    from prime_ray.distributed.cluster import ensure_ray
    from prime_ray.distributed.student import start_student, stop_student
    from prime_ray.spec import load_spec

    err = err_console()
    if not _is_job_dir(str(job)):
        say(err, plain(f"{job} is not a job's artifact folder (no spec.json)", "red"))
        raise typer.Exit(2)
    ensure_ray(load_spec(job / "spec.json").resources)
    handle = start_student(job, http_port=port, http_host=host)
    base = f"http://{host}:{port}/students/{handle.job_id}"
    info = handle.info()
    out = out_console()
    say(out, plain("serving ", "green"), f"{base}  (adapters: {', '.join(info.adapters)}; {info.users} users)")
    say(out, f"  curl -s {base}/predict -H 'Content-Type: application/json' "
             f"-d '{{\"user_id\": \"<user>\", \"input\": \"...\"}}'")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C: the app is deleted
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say(err, "stopping")
    finally:
        stop_student(handle.job_id)


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
    app.command("serve")(serve)
