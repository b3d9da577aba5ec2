"""The docs are executed: every fenced block marked runnable in README.md and docs/*.md runs here.

Markers, in a block's info string (GitHub still highlights the language):
    ```bash runnable expect="valid users"      a shell block: run with bash -e -o pipefail
    ```python runnable expect="Answer: 4"      a Python block: run with this interpreter
    ```json file=users.jsonl                   written into the folder, for the blocks after it
    ```yaml spec-section                       a part of a JobSpec: validated inside a minimal spec
Each document's blocks run in order in one temporary folder holding a copy of `examples/` (so the
commands run exactly as written from a checkout's root), with the tiny model and caches of the test
session. A block passes when it exits 0 and its output holds every `expect` string.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)(.*)$")


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    text: str
    runnable: bool = False
    spec_section: bool = False
    file: str | None = None
    expect: list[str] = field(default_factory=list)


def blocks(doc: Path) -> list[Block]:
    found, current = [], None
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if current is None:
            match = FENCE.match(line)
            if match:
                options = shlex.split(match.group(2))
                current = Block(doc, number, match.group(1), "", runnable="runnable" in options,
                                spec_section="spec-section" in options)
                for option in options:
                    key, _, value = option.partition("=")
                    if key == "file":
                        current.file = value
                    elif key == "expect":
                        current.expect.append(value)
        elif line.startswith("```"):
            found.append(current)
            current = None
        else:
            current.text += line + "\n"
    assert current is None, f"{doc}: a fence opened on line {current.line} is not closed"
    return found


def _check_spec_section(block: Block) -> None:
    import yaml

    from prime_ray.spec import SpecError, parse_spec

    section = yaml.safe_load(block.text)
    document = {"name": "doc", "data": {"source": {"format": "movielens-100k"}, "task": {"kind": "rating"}}}
    try:
        parse_spec({**document, **section})
    except SpecError as e:
        pytest.fail(f"{block.doc.relative_to(ROOT)}:{block.line}: the spec section is not valid:\n{e}")


def _run(block: Block, folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if block.lang == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    elif block.lang == "python":
        command = [sys.executable, "-c", block.text]
    else:
        raise AssertionError(f"{block.doc.name}:{block.line}: cannot run a '{block.lang}' block")
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    where = f"{block.doc.relative_to(ROOT)}:{block.line}"
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{block.text}\n{done.stdout}\n{done.stderr}"
    for expected in block.expect:
        assert expected in done.stdout + done.stderr, f"{where}: {expected!r} not in the output:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_runnable_blocks_of_the_doc_run(doc, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    ran = 0
    for block in blocks(doc):
        if block.file:
            (tmp_path / block.file).write_text(block.text, encoding="utf-8")
        if block.runnable:
            _run(block, tmp_path)
            ran += 1
        elif block.spec_section:
            _check_spec_section(block)
            ran += 1
    print(f"\n{doc.relative_to(ROOT)}: ran {ran} block(s)")


def test_the_docs_hold_runnable_blocks():
    counts = {doc.name: sum(b.runnable or b.spec_section for b in blocks(doc)) for doc in DOCS}
    print(f"\nrunnable blocks: {counts}, {sum(counts.values())} in all")
    assert counts["README.md"] >= 2 and sum(counts.values()) >= 6


def test_jsonl_examples_are_one_record_per_line():
    """A JSON Lines example pasted into a file must load: one complete JSON document per line."""
    import json

    for doc in DOCS:
        for block in blocks(doc):
            if block.file and block.file.endswith(".jsonl"):
                for number, line in enumerate(block.text.splitlines(), 1):
                    if line.strip():
                        try:
                            json.loads(line)
                        except ValueError as e:
                            pytest.fail(f"{doc.name}:{block.line + number}: not one JSON record per line: {e}")
