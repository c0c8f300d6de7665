"""Tasks: data + chat formatting + metric, one YAML each with a small hook module."""

from peftlab.tasks.registry import TaskSpec, all_tasks, get_task

__all__ = ["TaskSpec", "all_tasks", "get_task"]
