"""The Celery application the workers run: ``celery -A tasks worker -P gevent -c 100``.

The same code runs unchanged under ``-P prefork`` (the async twin, one long-lived event loop
per child process) and ``-P gevent`` (the sync twin, shared by every greenlet); see
``docs/celery.md``.

* :data:`app` — the Celery app (``tasks.app`` module: configuration from the environment);
* tasks ``scan.run``, ``scan.vision`` → ``scan.rule`` → ``scan.answer`` (``tasks.scan``) and
  the naive reproduction ``scan.run_naive`` (``tasks.naive``, not consumed by default);
* :func:`submit_scan` / :func:`submit_scan_async` — queue a scan, get its id;
* worker hooks and per-process clients (``tasks.worker``).
"""

from __future__ import annotations

# Importing the submodules registers the tasks and connects the worker hooks.
from tasks import naive, worker
from tasks.app import CelerySettings, app, celery_settings, create_app
from tasks.scan import scan_signature, submit_scan, submit_scan_async

__all__ = [
    "CelerySettings",
    "app",
    "celery_settings",
    "create_app",
    "naive",
    "scan_signature",
    "submit_scan",
    "submit_scan_async",
    "worker",
]
