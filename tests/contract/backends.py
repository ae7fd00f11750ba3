"""The backends the contract suite runs against: one ``BackendCase`` per implementation.

To add a backend, append a case to ``CASES``:

* ``make(tmp_path)`` returns the backend and ``new_target()``, which hands out a fresh, unused
  target on every call. A case that needs a server (moto, OpenBao) starts it lazily, once per
  session, so running only the file case starts nothing.
* ``teardown(backend)`` (optional) runs after each test, before ``backend.close()``.
* ``app_read(backend, target)`` (optional) reads the target's ``field`` the way an application
  would, without going through ``backend.read``; the suite falls back to ``backend.read``.
* ``marks`` are pytest marks for the whole case (``pytest.mark.slow``, a skipif, ...).

Tests never branch on a case's name: what a backend cannot do is declared in its ``capabilities``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Callable

from rotator.interfaces import Backend, Target
from rotator.testing import provider_context

NewTarget = Callable[[], Target]


@dataclass(frozen=True)
class BackendCase:
    name: str
    make: Callable[[Path], tuple[Backend, NewTarget]]
    teardown: Callable[[Backend], None] | None = None
    app_read: Callable[[Backend, Target], str | None] | None = None
    marks: tuple[Any, ...] = ()


def _make_file(tmp_path: Path) -> tuple[Backend, NewTarget]:
    from providers.file import FileBackend

    backend = FileBackend("contract-file", {"directory": str(tmp_path / "secrets")}, provider_context())
    numbers = count(1)
    return backend, lambda: backend.target({"path": f"app-{next(numbers)}/quiva.json"})


def _app_read_file(backend: Backend, target: Target) -> str | None:
    path = Path(target.label.removeprefix("file:"))
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get(target.field)


CASES: list[BackendCase] = [
    BackendCase(name="file", make=_make_file, app_read=_app_read_file),
]
