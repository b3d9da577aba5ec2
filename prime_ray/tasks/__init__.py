"""Task kinds, one object each, in a registry (see `prime_ray.tasks.base`)."""

from prime_ray.tasks import kinds as _kinds  # noqa: F401 - registers the four kinds
from prime_ray.tasks.base import Reference, TaskKind, UnknownTaskKind, register_task_kind, task_kind, task_kinds

__all__ = ["Reference", "TaskKind", "UnknownTaskKind", "register_task_kind", "task_kind", "task_kinds"]
