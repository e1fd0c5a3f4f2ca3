"""N concurrent sync scans in one gevent-patched process; prints a JSON report.

    python -m tests.gevent_scans --scans 50 --db-sleep 0.2 [--ca-file ca.pem]

Environment: ``OPENAI_BASE_URL`` (the stand-in, with its latency set by the caller),
``WASTE_PIPELINE_DATABASE_URL``. Each greenlet runs one whole scan (two model calls) and one
``pg_sleep`` query through the pipeline's own pool, so the elapsed time shows whether HTTP,
TLS and PostgreSQL all yield to the hub.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import httpx2  # noqa: E402

from tests.helpers import TEST_API_KEY, jpeg_data_url  # noqa: E402
from waste_pipeline._sync.pipeline import ScanPipeline  # noqa: E402
from waste_pipeline._sync_db import uses_blocking_wait  # noqa: E402
from waste_pipeline.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=50)
    parser.add_argument("--db-sleep", type=float, default=0.2)
    parser.add_argument("--ca-file", default=None)
    parser.add_argument(
        "--skip-wait-guard",
        action="store_true",
        help="negative control: let psycopg block the hub (PSYCOPG_WAIT_FUNC)",
    )
    args = parser.parse_args()
    blocking = uses_blocking_wait()
    if args.skip_wait_guard:
        import waste_pipeline._sync_db as sync_db

        sync_db.uses_blocking_wait = lambda: False
    settings = Settings(
        openai_api_key=TEST_API_KEY, db_pool_max=args.scans + 2, model_max_retries=0
    )
    http = httpx2.Client(verify=args.ca_file or True, limits=httpx2.Limits(max_connections=500))
    image = jpeg_data_url(320, 240)
    with ScanPipeline(settings, http_client=http) as pipeline:
        pipeline.scan(image, "warm-up")  # connections and the schema, outside the timing
        store = pipeline._store
        assert store is not None

        def one(i: int) -> str:
            store.db.fetchrow("SELECT pg_sleep($1::float8) AS slept", args.db_sleep)
            return pipeline.scan(image, f"item {i}").status

        start = time.perf_counter()
        jobs = [gevent.spawn(one, i) for i in range(args.scans)]
        gevent.joinall(jobs, timeout=120)
        elapsed = time.perf_counter() - start
    http.close()
    statuses = [j.value if j.successful() else repr(j.exception) for j in jobs]
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "done": statuses.count("done"),
                "errors": [s for s in statuses if s != "done"][:5],
                "psycopg_blocking_wait": blocking,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
