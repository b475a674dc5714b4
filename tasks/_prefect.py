"""A lazy ``@task``: the wrapped function stays a plain function, and Prefect is imported only
when the task is first used by a flow. CLI commands that run no flow (validate, preview, runs,
report) import the task modules without paying Prefect's ~1.4 s import."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class LazyTask:
    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._options = options
        self._task: Any = None

    def _real(self) -> Any:
        if self._task is None:
            from prefect import task as prefect_task

            self._task = prefect_task(**self._options)(self.fn)
        return self._task

    @property
    def prefect_task(self) -> Any:
        """The Prefect ``Task`` itself (built on first use), e.g. for a task runner's
        ``submit(task, parameters)``."""
        return self._real()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)


def task(**options: Any) -> Callable[[Callable[..., Any]], LazyTask]:
    """``@task(name=..., retries=...)`` with Prefect's options, built on first use."""

    def decorate(fn: Callable[..., Any]) -> LazyTask:
        return LazyTask(fn, options)

    return decorate
