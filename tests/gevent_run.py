"""Run pytest with gevent's monkey-patching applied before anything else is imported.

    python -m tests.gevent_run tests/_sync -q

Used by ``tests/test_gevent.py`` to run the generated sync tests a second time, the way a
``celery -P gevent`` worker runs the sync twin.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import pytest  # noqa: E402

if __name__ == "__main__":
    import psycopg.waiting

    wait_c = getattr(psycopg.waiting, "wait_c", None)
    if wait_c is not None and psycopg.waiting.wait is wait_c:
        sys.exit("psycopg chose its C wait function under gevent: it would block the hub")
    sys.exit(pytest.main([*sys.argv[1:], "-p", "no:cacheprovider"]))
