"""What the gateway accepts from a client, checked before anything is stored or answered.

Every client mistake becomes an `ApiError` (a 4xx with each problem at its path), never a 500:
spec bodies are read with the spec reader's rules (duplicate keys, non-finite numbers, integers
beyond 64 bits, lone surrogates, depth and size bounds; see `prime_ray.spec`), and every integer a
client sends in a query or a header is bounded. Parsing a body is CPU work: the routes run
`parse_spec_body` in a worker thread so the event loop (and `/healthz`) keeps answering.
"""

from __future__ import annotations

from prime_ray.spec import JobSpec, SpecError, SpecProblem, parse_json, parse_spec, parse_yaml

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

# The largest byte offset or sequence number a client may send: a signed 64-bit integer, what SQLite
# and a file seek take.
MAX_OFFSET = 2**63 - 1


class ApiError(Exception):
    """An answer other than 2xx: HTTP status, a one-line detail and, for invalid input, the problems."""

    def __init__(self, status: int, detail: str, problems: list[SpecProblem] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.problems, self.headers = status, detail, problems or [], headers


def printable(text: str) -> str:
    """`text` with lone surrogates written as escapes, so an answer that quotes a client's input encodes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_spec_body(content_type: str, body: bytes) -> JobSpec:
    """A POSTed spec (JSON or YAML, UTF-8, an optional byte-order mark) as a JobSpec.

    Raises ApiError: 415 for another media type, 422 with located problems for anything unreadable
    or invalid. CPU-bound: call it off the event loop.
    """
    media = content_type.split(";")[0].strip().lower()
    if media not in JSON_TYPES + YAML_TYPES:
        raise ApiError(415, f"send the spec as application/json or application/yaml, not {media or 'no content type'}")
    if not body.strip():
        raise ApiError(422, "invalid job spec", [SpecProblem(path="", message="the request body is empty")])
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ApiError(422, "invalid job spec", [SpecProblem(
            path="", message=f"cannot read the body: not valid UTF-8 (byte {e.start})")]) from None
    try:
        document = parse_json(text) if media in JSON_TYPES else parse_yaml(text)
        return parse_spec(document)
    except SpecError as e:
        raise ApiError(422, f"invalid job spec: {len(e.problems)} problem(s)", e.problems) from None


def event_cursor(value: str | None, name: str = "header.Last-Event-ID") -> int:
    """A client's event cursor (`Last-Event-ID`): 0 when absent or not a number, ApiError 422 when it
    is a number beyond MAX_OFFSET (no events file is that long: it is a client's mistake)."""
    if not value or not (value.isascii() and value.isdigit()):
        return 0
    if len(value) > len(str(MAX_OFFSET)) or int(value) > MAX_OFFSET:
        raise ApiError(422, "invalid request", [SpecProblem(path=name, message=f"must be <= {MAX_OFFSET}")])
    return int(value)
