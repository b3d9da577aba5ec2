"""`prime-ray gateway | keys | up | down`: running prime-ray as a service."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from prime_ray.cli.text import err_console, out_console, plain, say, typer_app

keys_app = typer_app(help="API keys of the gateway (stored hashed in its database).", no_args_is_help=True)

DB_URL = typer.Option(None, "--db-url", help="Job database URL [env PRIME_RAY_DB_URL].")


def _settings(**options: Any):
    from pydantic import ValidationError

    from prime_ray.service.settings import GatewaySettings

    try:
        return GatewaySettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as e:
        say(err_console(), plain("invalid gateway settings: ", "red"), e)
        raise typer.Exit(2) from None


def gateway(
    host: str | None = typer.Option(None, "--host", help="Listen address [env PRIME_RAY_HOST, 127.0.0.1]."),
    port: int | None = typer.Option(None, "--port", help="Listen port [env PRIME_RAY_PORT, 8000]."),
    db_url: str | None = DB_URL,
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray Jobs API URL [env PRIME_RAY_RAY_ADDRESS]."),
    artifact_root: str | None = typer.Option(None, "--artifact-root", help="Job artifacts [env PRIME_RAY_ARTIFACT_ROOT]."),
    ray_token_file: str | None = typer.Option(None, "--ray-token-file", help="Ray auth token [env PRIME_RAY_RAY_TOKEN_FILE]."),
) -> None:
    """Serve the REST API (jobs, events, logs, artifacts) and follow jobs on Ray."""
    import logging

    from prime_ray.service.server import serve

    settings = _settings(host=host, port=port, db_url=db_url, ray_address=ray_address,
                         artifact_root=artifact_root, ray_token_file=ray_token_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings)


@keys_app.command("create")
def keys_create(
    read_only: bool = typer.Option(False, "--read-only", help="May read jobs, but not create or cancel them."),
    name: str = typer.Option("", "--name", help="A label to recognize the key by."),
    db_url: str | None = DB_URL,
) -> None:
    """Create a key and print it (once: only its hash is stored)."""
    from prime_ray.service.db import open_database
    from prime_ray.service.keys import create_key

    row, key = create_key(open_database(_settings(db_url=db_url).db_url), name=name, read_only=read_only)
    say(err_console(), f"key id {row.id} ({'read-only' if read_only else 'read-write'}); "
        "store the key now, it is not shown again:")
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (`prime-ray keys list`)."), db_url: str | None = DB_URL) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from prime_ray.service.db import open_database
    from prime_ray.service.keys import revoke_key

    if not revoke_key(open_database(_settings(db_url=db_url).db_url), key_id):
        say(err_console(), plain(f"no live key with id {key_id!r}", "red"))
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def keys_list(db_url: str | None = DB_URL) -> None:
    """List keys (ids, names, access, state); never the keys themselves."""
    from prime_ray.service.db import open_database
    from prime_ray.service.keys import list_keys

    table = Table("id", "name", "access", "created", "revoked")
    for row in list_keys(open_database(_settings(db_url=db_url).db_url)):
        table.add_row(plain(row.id), plain(row.name), "read-only" if row.read_only else "read-write",
                      f"{row.created_at:%Y-%m-%d %H:%M}", f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "")
    out_console().print(table)


def up(
    port: int | None = typer.Option(None, "--port", help="Gateway port [env PRIME_RAY_PORT, 8000; 0: a free one]."),
    num_cpus: int = typer.Option(2, "--num-cpus", min=1, help="CPUs of the local Ray head."),
) -> None:
    """Start a local Ray head (Jobs API) and the gateway on loopback, in the background.

    Run again after a crash, it starts only what is not running (never stopping a live Ray head or its jobs)."""
    from prime_ray.service import stack

    try:
        result = stack.up(_settings(port=port), num_cpus=num_cpus)
    except (RuntimeError, TimeoutError) as e:
        say(err_console(), plain("prime-ray up failed: ", "red"), e)
        raise typer.Exit(1) from None
    console = out_console()
    say(console, f"gateway {'already running' if result.reused else 'started'}: {result.url}")
    say(console, f"ray head {'already running' if result.ray_reused else 'started'}: {result.state['ray']['temp_dir']} "
                 f"(dashboard on 127.0.0.1:{result.state['ray']['ports']['dashboard-port']}; "
                 "everything listens on 127.0.0.1 only)")
    # Joining this Ray from `prime-ray run` needs its address and its auth token (Ray enables token
    # auth; a driver reads the token from RAY_AUTH_TOKEN_PATH).
    from prime_ray.service.local import LocalRay

    head = LocalRay(**result.state["ray"])
    say(console, "run a job on this Ray directly (without the gateway):")
    typer.echo(f"  RAY_AUTH_TOKEN_PATH={head.token_file} prime-ray run SPEC --address {head.address}")
    if result.api_key:
        say(console, "admin API key (shown once):")
        typer.echo(result.api_key)
        typer.echo(f"export PRIME_RAY_URL={result.url} PRIME_RAY_API_KEY={result.api_key}")
    else:
        say(console, "an API key exists already; make another with `prime-ray keys create`")
        typer.echo(f"export PRIME_RAY_URL={result.url}")


def down() -> None:
    """Stop the Ray head and the gateway that `prime-ray up` started (nothing else)."""
    from prime_ray.service import stack

    if not stack.down():
        typer.echo("nothing to stop (no state file)")
        raise typer.Exit(0)
    typer.echo("stopped the gateway and its Ray head")


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
    app.add_typer(keys_app, name="keys")
    app.command("up")(up)
    app.command("down")(down)
