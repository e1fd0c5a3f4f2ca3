"""The SQL of the ``scans`` table: one text for both drivers (PostgreSQL ``$n`` placeholders)."""

from __future__ import annotations

__all__ = [
    "BEGIN",
    "COUNT_BY_STATUS",
    "ENSURE_PENDING",
    "FAIL",
    "FINISH",
    "GET",
    "SAVE_CLASSIFICATION",
    "SAVE_RULES",
    "SCHEMA",
]

# One DO block: runs as one transaction, so the advisory lock serialises concurrent callers
# (many workers starting at once) and running it twice is harmless.
SCHEMA = """
DO $$
BEGIN
  PERFORM pg_advisory_xact_lock(727001);
  CREATE TABLE IF NOT EXISTS scans (
    id             text PRIMARY KEY,
    status         text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    inputs         jsonb NOT NULL DEFAULT '{}'::jsonb,
    classification jsonb,
    rules_key      text,
    answer         jsonb,
    result         jsonb,
    error          jsonb,
    attempts       integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
  );
  CREATE INDEX IF NOT EXISTS scans_status_idx ON scans (status);
END
$$;
"""

# A queued scan: the row exists before any worker sees it. Never overwrites.
ENSURE_PENDING = """
INSERT INTO scans (id, status, inputs) VALUES ($1, 'pending', $2::jsonb)
ON CONFLICT (id) DO NOTHING
"""

# A delivery starts: count the attempt unless the scan already ended 'done' (redelivery).
BEGIN = """
INSERT INTO scans (id, status, inputs, attempts) VALUES ($1, 'running', $2::jsonb, 1)
ON CONFLICT (id) DO UPDATE SET
  status     = CASE WHEN scans.status = 'done' THEN scans.status ELSE 'running' END,
  attempts   = scans.attempts + CASE WHEN scans.status = 'done' THEN 0 ELSE 1 END,
  inputs     = CASE WHEN scans.inputs = '{}'::jsonb THEN EXCLUDED.inputs ELSE scans.inputs END,
  updated_at = now()
RETURNING id, status, attempts, result
"""

SAVE_CLASSIFICATION = """
UPDATE scans SET classification = $2::jsonb, updated_at = now()
WHERE id = $1 AND status <> 'done'
"""

SAVE_RULES = """
UPDATE scans SET rules_key = $2, updated_at = now()
WHERE id = $1 AND status <> 'done'
"""

FINISH = """
INSERT INTO scans (id, status, inputs, classification, rules_key, answer, result, error,
                   attempts, finished_at)
VALUES ($1, 'done', $2::jsonb, $3::jsonb, $4, $5::jsonb, $6::jsonb, NULL, 1, now())
ON CONFLICT (id) DO UPDATE SET
  status = 'done', classification = EXCLUDED.classification, rules_key = EXCLUDED.rules_key,
  answer = EXCLUDED.answer, result = EXCLUDED.result, error = NULL,
  updated_at = now(), finished_at = now()
"""

# status is 'failed' for a final failure, 'pending' when a retry will follow.
FAIL = """
INSERT INTO scans (id, status, inputs, error, attempts, finished_at)
VALUES ($1, $2, $3::jsonb, $4::jsonb, 1, CASE WHEN $2 = 'failed' THEN now() END)
ON CONFLICT (id) DO UPDATE SET
  status = CASE WHEN scans.status = 'done' THEN scans.status ELSE EXCLUDED.status END,
  error  = CASE WHEN scans.status = 'done' THEN scans.error ELSE EXCLUDED.error END,
  finished_at = CASE WHEN scans.status = 'done' THEN scans.finished_at
                     ELSE EXCLUDED.finished_at END,
  updated_at = now()
"""

GET = """
SELECT id, status, inputs, classification, rules_key, answer, result, error, attempts,
       created_at, updated_at, finished_at
FROM scans WHERE id = $1
"""

COUNT_BY_STATUS = "SELECT status, count(*) AS n FROM scans GROUP BY status"
