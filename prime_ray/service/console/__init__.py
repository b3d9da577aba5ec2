"""The web console: server-rendered pages on the gateway for people (no build step, no CDN).

    GET  /                    jobs, newest first, with a state filter
    GET  /jobs/{id}           live progress (server-sent events), events, log tail, artifacts, the report
    GET  /submit, POST        a YAML spec, checked by the same validator as the CLI and the REST API
    POST /jobs/{id}/cancel    (read-write keys only)
    GET  /login, POST         the same API keys as the REST API; POST /logout

A login puts the key's id (never the key) in a signed, HTTP-only session cookie; every request checks
that the key is still live, so revoking a key logs its sessions out. Forms carry a per-session CSRF
token (the synchronizer-token pattern), checked on every POST.
"""

from prime_ray.service.console.routes import install_console

__all__ = ["install_console"]
