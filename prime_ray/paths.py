"""Where prime-ray keeps its caches: compiled ops, Ray session files, model copies, fetched data.

One root, `PRIME_RAY_CACHE_DIR` (default `~/.cache/prime-ray`), so a project or a container controls
all of it. `configure_environment()` points the libraries that cache on their own at it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("PRIME_RAY_CACHE_DIR") or Path.home() / ".cache" / "prime-ray")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def configure_environment() -> dict[str, str]:
    """Set cache locations for DeepSpeed's compiled ops and Ray's temp files unless already set.

    Returns the variables, so they can be passed to Ray workers through a runtime_env.
    """
    defaults = {
        # DeepSpeed compiles a shared-memory comm op with g++ on CPU (~30 s); cache it where we control.
        "TORCH_EXTENSIONS_DIR": str(cache_dir("torch_extensions")),
        "RAY_TMPDIR": str(cache_dir("ray")),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in defaults}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
