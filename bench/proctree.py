"""Peak memory of a whole process tree (a flow process and the worker processes it starts).

``ru_maxrss`` of RUSAGE_CHILDREN reports only the largest single descendant, so a flow with two
worker processes would look half its size; and on Linux a child's ``ru_maxrss`` starts at its
parent's RSS (the fork before exec), so a small scenario would look as large as the orchestrator. :class:`TreeMonitor` polls ``/proc`` every 0.2 s and
keeps the peak of the *sum* of the resident set sizes of a process and all its descendants. A sum
of RSS counts shared pages (libraries, copy-on-write pages after a fork) once per process, so it
errs on the high side: the figure is an upper bound of what the tree occupies.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def rss_bytes(pid: int) -> int:
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident * PAGE


def tree_rss_bytes(root: int) -> tuple[int, int]:
    """(sum of RSS, number of processes) of the tree under ``root``."""
    pids = tree_pids(root)
    return sum(rss_bytes(p) for p in pids), len(pids)


class TreeMonitor:
    """Polls the tree under ``pid`` in a background thread; ``peak_mb`` and ``max_processes``
    hold the highest figures seen."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-rss", daemon=True)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            total, count = tree_rss_bytes(self.pid)
            self.peak_bytes = max(self.peak_bytes, total)
            self.max_processes = max(self.max_processes, count)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(2)
