-- omni's shared job store (`[store] url = "postgres://…"`): one row per job.
-- `record` is the job as the file store writes it (src/serve/jobs.rs `JobRecord`, JSON); the
-- other columns are what the queue queries and locks on, written together with it.
CREATE TABLE jobs (
    id               text        PRIMARY KEY,
    -- Creation order (claims take the oldest queued job first).
    seq              bigint      NOT NULL,
    -- queued | in_progress | completed | failed (the record's `status`).
    status           text        NOT NULL,
    progress         smallint    NOT NULL DEFAULT 0,
    -- Times a worker started the job (the record's `attempts`).
    attempts         integer     NOT NULL DEFAULT 0,
    -- `/v1/videos/sync` jobs: never listed.
    hidden           boolean     NOT NULL DEFAULT false,
    -- DELETE of a running job: gone from the API at once; the worker running it stops at its
    -- next cancellation check and removes the row.
    cancel_requested boolean     NOT NULL DEFAULT false,
    -- The worker running the job and until when it holds it (renewed while it runs; an expired
    -- lease re-queues the job, counting attempts).
    lease_owner      text,
    lease_expires_at timestamptz,
    record           jsonb       NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE jobs_seq;

-- The claim query: unfinished jobs in creation order.
CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status IN ('queued', 'in_progress');
