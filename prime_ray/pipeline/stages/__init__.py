"""The built-in stages. Importing this package registers them, in pipeline order."""

from prime_ray.pipeline.stages import (
    eval,  # noqa: F401
    ingest,  # noqa: F401
    memory,  # noqa: F401
    traces,  # noqa: F401
    train,  # noqa: F401
)
