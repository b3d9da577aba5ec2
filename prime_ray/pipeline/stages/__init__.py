"""The built-in stages. Importing this package registers them, in pipeline order."""

from prime_ray.pipeline.stages import ingest  # noqa: F401
from prime_ray.pipeline.stages import memory  # noqa: F401
from prime_ray.pipeline.stages import traces  # noqa: F401
from prime_ray.pipeline.stages import train  # noqa: F401
from prime_ray.pipeline.stages import eval  # noqa: F401
