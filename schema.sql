-- The pipeline's one database: the job table, its audit trail, and what the programs record.
-- Programs apply this file on start (every statement is IF NOT EXISTS); PRAGMA user_version
-- holds its version. Times are UTC seconds since the epoch (REAL); the views show them readable.
-- Operator's entry point: sqlite3 var/pipeline.db, then the views at the end of this file.

-- One row per appearance of a file in the hot folder.
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY,
    uuid            TEXT    NOT NULL UNIQUE,          -- sent as Idempotency-Key
    state           TEXT    NOT NULL CHECK (state IN ('detected', 'archived', 'routed', 'notified', 'failed', 'held', 'dismissed')),
    source_path     TEXT    NOT NULL,                 -- where the file was found
    client_folder   TEXT    NOT NULL,                 -- the hot folder's subfolder it was in
    file_name       TEXT    NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,                 -- the file's last write: drop time for latency
    ctime_ns        INTEGER NOT NULL,
    device          INTEGER NOT NULL,
    inode           INTEGER NOT NULL,
    sha256          TEXT,                             -- of the content, once read
    client_code     TEXT,
    job_category    TEXT,
    studio_code     TEXT,
    title           TEXT,
    detected_by     TEXT    NOT NULL CHECK (detected_by IN ('startup', 'realtime', 'periodic')),
    detected_at     REAL    NOT NULL,
    archived_at     REAL,
    routed_at       REAL,
    notified_at     REAL,
    failed_at       REAL,
    updated_at      REAL    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,       -- retries of the current step (place or API)
    claims          INTEGER NOT NULL DEFAULT 0,       -- claims since the last recorded outcome
    next_attempt_at REAL    NOT NULL,                 -- due time; while claimed, the lease expiry
    lease_owner     TEXT,
    lease_token     TEXT,
    last_error      TEXT,
    failed_step     TEXT    CHECK (failed_step IN ('detect', 'validate', 'archive', 'route', 'notify')),
    archive_path    TEXT,
    failed_path     TEXT,                             -- FAILED/{CLIENT}/{stamp}_{name} when moved there
    order_key       TEXT,                             -- router.order_by's value once read; '' unordered
    waits_after     INTEGER,                          -- the earlier job of its key it waits for
    -- Steering (docs/design.md#steering), schema 10; added last, as ALTER TABLE adds them.
    waits_on        TEXT,                             -- what it waits for, when a person paused it ('destination:NAME')
    released_at     REAL,                             -- when a person released it from held: not held again
    dismissed_at    REAL                              -- when a person dismissed it (state dismissed)
);

-- The routers' queue and the notifier's queue: partial, so finished jobs cost nothing.
CREATE INDEX IF NOT EXISTS jobs_route_queue  ON jobs (next_attempt_at) WHERE state IN ('detected', 'archived');
CREATE INDEX IF NOT EXISTS jobs_notify_queue ON jobs (next_attempt_at) WHERE state = 'routed';
-- Detection's duplicate check: one appearance of a file gives one job.
CREATE INDEX IF NOT EXISTS jobs_inode        ON jobs (inode, device);
CREATE INDEX IF NOT EXISTS jobs_updated      ON jobs (updated_at);
CREATE INDEX IF NOT EXISTS jobs_detected     ON jobs (detected_at);   -- today's counts, bin/status
CREATE INDEX IF NOT EXISTS jobs_failed       ON jobs (failed_at) WHERE state = 'failed';
CREATE INDEX IF NOT EXISTS jobs_file_name    ON jobs (file_name);      -- the dashboard's name search
-- Order per key: the earlier jobs of a key not yet settled, and those not yet read (a NULL key).
CREATE INDEX IF NOT EXISTS jobs_order_key    ON jobs (order_key, id)
    WHERE state NOT IN ('routed', 'notified', 'failed', 'dismissed');
-- The jobs held back behind an earlier one, made due when that one is settled.
CREATE INDEX IF NOT EXISTS jobs_waits_after  ON jobs (waits_after) WHERE waits_after IS NOT NULL;

-- The audit trail: one row per transition, written in the same transaction.
CREATE TABLE IF NOT EXISTS job_events (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at         REAL    NOT NULL,
    from_state TEXT,                                  -- NULL when the job is created
    to_state   TEXT    NOT NULL,
    actor      TEXT    NOT NULL,                      -- program@host:pid
    detail     TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);
CREATE INDEX IF NOT EXISTS job_events_at  ON job_events (at);

-- One row per committed copy of a job's file to a routing destination.
CREATE TABLE IF NOT EXISTS deliveries (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,                    -- the rule's label
    path         TEXT    NOT NULL,
    action       TEXT    NOT NULL CHECK (action IN ('written', 'kept')),
    delivered_at REAL    NOT NULL,
    UNIQUE (job_id, path)
);
CREATE INDEX IF NOT EXISTS deliveries_at ON deliveries (delivered_at);
-- A route's last delivery (the dashboard's /destinations): without it, max() per name reads every delivery.
CREATE INDEX IF NOT EXISTS deliveries_name ON deliveries (name, delivered_at);

-- Error-log records waiting to be written to paths.error_log. Each is inserted in the
-- transaction that fails its job and deleted once its file is written, so a record whose disk is
-- full, or whose writer dies, is written later, never lost.
CREATE TABLE IF NOT EXISTS error_log_outbox (
    id     INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,                          -- no foreign key: pruning never loses a record
    name   TEXT    NOT NULL,                          -- the file's name in paths.error_log
    record TEXT    NOT NULL                           -- its JSON text
);

-- Running totals for the Prometheus counters, bumped in the transaction of the
-- transition they count. Nightly pruning deletes jobs, never these, so a counter never goes down.
-- labels is a JSON array of the label values, in the order metrics.py names them.
CREATE TABLE IF NOT EXISTS tallies (
    name   TEXT    NOT NULL,                          -- finished, deliveries, notify_attempts
    labels TEXT    NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (name, labels)
) WITHOUT ROWID;

-- One row per scan of the hot folder.
CREATE TABLE IF NOT EXISTS scans (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('startup', 'periodic', 'rescan')),
    actor        TEXT    NOT NULL,
    started_at   REAL    NOT NULL,
    finished_at  REAL,
    files_seen   INTEGER NOT NULL DEFAULT 0,
    jobs_created INTEGER NOT NULL DEFAULT 0,
    slow         INTEGER NOT NULL DEFAULT 0,
    timed_out    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS scans_started ON scans (started_at);

-- One row per running program instance, beaten every few seconds.
CREATE TABLE IF NOT EXISTS heartbeats (
    program    TEXT    NOT NULL,                      -- scanner, watcher, router:router_00, ...
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    started_at REAL    NOT NULL,
    beat_at    REAL    NOT NULL,
    clock_skew REAL    NOT NULL DEFAULT 0,            -- its host's clock minus the database's
    config       TEXT NOT NULL DEFAULT '',            -- fingerprint of the configuration it runs
    config_since REAL NOT NULL DEFAULT 0,             -- since when it runs that one (start or reload)
    PRIMARY KEY (program, host)
);

-- The reporter's index: the day's report and the retention pruning look jobs up by outcome time.
CREATE INDEX IF NOT EXISTS jobs_routed       ON jobs (routed_at);

-- One row per report of a period (kind 'daily': a calendar day in report.timezone), created
-- before it is due. Claimed with a lease like a job, so two reporters send it once; its figures
-- are kept as JSON, so they outlive the jobs that retention prunes.
CREATE TABLE IF NOT EXISTS reports (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('daily')),
    day             TEXT    NOT NULL,                 -- YYYY-MM-DD, local to report.timezone
    -- pending until sent; recorded: figures kept but not sent (no smtp.host or recipients)
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'recorded')),
    created_at      REAL    NOT NULL,
    next_attempt_at REAL    NOT NULL,                 -- due time; while claimed, the lease expiry
    claimed_by      TEXT,                             -- program@host:pid of the last claimant
    claimed_at      REAL,
    lease_token     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,       -- sends tried
    last_error      TEXT,                             -- why the last send failed (shown by bin/status)
    sent_at         REAL,
    recipients      TEXT,                             -- who it went to, comma-separated
    figures         TEXT,                             -- the report's figures as JSON
    UNIQUE (kind, day)
);
CREATE INDEX IF NOT EXISTS reports_due ON reports (next_attempt_at) WHERE state = 'pending';

-- One row per failure alert tried: what it covered and whether it went out.
CREATE TABLE IF NOT EXISTS alerts (
    id            INTEGER PRIMARY KEY,
    at            REAL    NOT NULL,                   -- when it was claimed
    actor         TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('sending', 'sent', 'failed')),
    covered_until REAL    NOT NULL,                   -- failures up to this time are in it
    failures      INTEGER NOT NULL,                   -- new failed jobs it lists
    stuck         INTEGER NOT NULL,                   -- jobs waiting past alerts.stuck_after
    recipients    TEXT    NOT NULL,
    sent_at       REAL,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS alerts_at ON alerts (at);

-- One row per destination of an alert (the email, each [alerts] urls channel), created with the
-- alert: each is sent, retried and logged on its own, so one failing never holds up the others.
-- Claimed with a lease like a report, so two reporters send it once.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id              INTEGER PRIMARY KEY,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    destination     TEXT    NOT NULL,                 -- 'email', or 'channel:' and a hash of its URL
    label           TEXT    NOT NULL,                 -- the channel for people, its secrets hidden
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,                 -- due time; while claimed, the lease expiry
    lease_token     TEXT,
    last_error      TEXT,
    sent_at         REAL,
    findings        TEXT    NOT NULL,                 -- what the alert says, as JSON
    UNIQUE (alert_id, destination)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE state = 'pending';

-- Expected arrivals: one row per silence of a client under an [[expect]] rule, open
-- until the client's next file. The alerts announce each silence once and its end once.
CREATE TABLE IF NOT EXISTS silences (
    id            INTEGER PRIMARY KEY,
    rule          TEXT    NOT NULL,                   -- the rule as text: "within 7200s 08:00-18:00 mon,tue"
    client        TEXT    NOT NULL,                   -- upper-cased client folder
    last_seen     REAL,                               -- its last file before the silence (NULL: never seen)
    due_at        REAL    NOT NULL,                   -- when a file was due at the latest
    opened_at     REAL    NOT NULL,                   -- when the reporter found the silence
    resumed_at    REAL,                               -- its first file after it; NULL while silent
    opened_alert  INTEGER,                            -- the alert that said it began
    resumed_alert INTEGER                             -- the alert that said it ended
);
CREATE UNIQUE INDEX IF NOT EXISTS silences_open ON silences (rule, client) WHERE resumed_at IS NULL;
CREATE INDEX IF NOT EXISTS silences_due ON silences (due_at);
-- A client's last file, for the expectations (matching is case-insensitive).
CREATE INDEX IF NOT EXISTS jobs_client_detected ON jobs (upper(client_folder), detected_at);

-- Who detects: with several hosts on one hot folder, the scanner and watcher of one
-- host hold this lease and renew it at every heartbeat; another host takes it once it runs out.
CREATE TABLE IF NOT EXISTS leaders (
    role        TEXT    NOT NULL PRIMARY KEY,         -- 'detect'
    host        TEXT    NOT NULL,
    holder      TEXT    NOT NULL,                     -- program@host:pid of the last renewal
    since       REAL    NOT NULL,                     -- when this host took it
    lease_until REAL    NOT NULL
);

-- Steering (docs/design.md#steering), schema 10. Jobs waiting on a pause, and held or dismissed
-- ones, are found by these partial indexes without reading finished jobs.
CREATE INDEX IF NOT EXISTS jobs_waits_on  ON jobs (waits_on) WHERE waits_on IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_held      ON jobs (updated_at) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS jobs_dismissed ON jobs (dismissed_at) WHERE state = 'dismissed';

-- What a person paused: a destination (a route's name), a client folder (upper-cased), all routing
-- or notification (name ''). One row per target; resuming deletes it, and a row whose until has
-- passed is no longer in force.
CREATE TABLE IF NOT EXISTS pauses (
    id      INTEGER PRIMARY KEY,
    kind    TEXT    NOT NULL CHECK (kind IN ('destination', 'client', 'routing', 'notification')),
    name    TEXT    NOT NULL,
    until   REAL,                                     -- NULL: until resumed
    reason  TEXT,
    actor   TEXT    NOT NULL,                         -- ops@host for a command, the dashboard's user
    created REAL    NOT NULL,
    UNIQUE (kind, name)
);

-- Every steering action (pause, resume, hold, release, dismiss, redeliver): who, when, what. The
-- jobs it touched also get their job_events rows.
CREATE TABLE IF NOT EXISTS steering_events (
    id     INTEGER PRIMARY KEY,
    at     REAL    NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,                          -- 'destination PRINTER', 'job 42', ...
    detail TEXT
);
CREATE INDEX IF NOT EXISTS steering_events_at ON steering_events (at);

-- A request to copy a finished job again from its archive copy (bin/redeliver), carried out by a
-- router: claimed with a lease like a job.
CREATE TABLE IF NOT EXISTS redeliveries (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    destination     TEXT,                             -- a route's name; NULL: every one its rules choose
    notify          INTEGER NOT NULL DEFAULT 0,       -- POST it again, with a fresh Idempotency-Key
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    actor           TEXT    NOT NULL,
    requested_at    REAL    NOT NULL,
    next_attempt_at REAL    NOT NULL,                 -- due time; while claimed, the lease expiry
    lease_owner     TEXT,
    lease_token     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,       -- place problems met
    claims          INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    done_at         REAL
);
CREATE INDEX IF NOT EXISTS redeliveries_due ON redeliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS redeliveries_job ON redeliveries (job_id);

-- The copies a re-delivery made, one per path (a crash resumes with the missing ones only).
CREATE TABLE IF NOT EXISTS redelivered (
    id             INTEGER PRIMARY KEY,
    redelivery_id  INTEGER NOT NULL REFERENCES redeliveries (id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,                  -- the rule's name
    path           TEXT    NOT NULL,
    delivered_at   REAL    NOT NULL,
    UNIQUE (redelivery_id, path)
);

-- A configuration file found invalid by a program's reload (SIGHUP), one row per host and file:
-- bin/status and the dashboard warn until a program of that host loads the file again, valid.
CREATE TABLE IF NOT EXISTS config_problems (
    host    TEXT NOT NULL,
    file    TEXT NOT NULL,                            -- the file as the program found it
    problem TEXT NOT NULL,                            -- the one-line error, naming the key
    since   REAL NOT NULL,                            -- when it was first found invalid
    seen_at REAL NOT NULL,                            -- when it was last found invalid
    PRIMARY KEY (host, file)
);

-- Requests to read the configuration again (bin/reload), one row each: a program whose heartbeat
-- finds a newer request than it has seen reads its file again, on whichever host it runs.
CREATE TABLE IF NOT EXISTS config_reloads (
    id           INTEGER PRIMARY KEY,
    requested_at REAL    NOT NULL,
    host         TEXT    NOT NULL,                    -- where bin/reload ran
    actor        TEXT    NOT NULL                     -- ops@host
);

-- Places in a destination folder with a max_waiting that a router has taken for the copies of the
-- batch it is making (docs/design.md#flow-control). Routers count such a folder one at a time and
-- each counts the others' places too, so together they never put more than max_waiting files
-- there. A batch gives its places back once its copies are in the folder; a row whose router died
-- expires with its lease.
CREATE TABLE IF NOT EXISTS places (
    folder  TEXT    NOT NULL,                   -- the destination folder, as the route names it
    owner   TEXT    NOT NULL,                   -- the batch's lease token
    taken   INTEGER NOT NULL,
    until   REAL    NOT NULL,                   -- the batch's lease at the time
    PRIMARY KEY (folder, owner)
);

-- The charts' figures of each ended day (docs/design.md#charts), kept once measured so that no
-- program measures a day twice: the jobs routed that local day (report.timezone, named by zone),
-- and the nearest-rank p50 and p95 of their drop-to-routed latency. Written by whoever measures
-- the day first (dashboard, reporter), once the day is over; pruning jobs later leaves it as it is.
CREATE TABLE IF NOT EXISTS daily_figures (
    zone        TEXT    NOT NULL,                     -- report.timezone, e.g. Europe/London
    day         TEXT    NOT NULL,                     -- YYYY-MM-DD, local to zone
    jobs        INTEGER NOT NULL,
    p50         REAL,                                 -- seconds; NULL when nothing was routed
    p95         REAL,
    measured_at REAL    NOT NULL,
    PRIMARY KEY (zone, day)
);

-- Each remote destination's last success and last error as the routers saw them (docs/design.md#remote-destinations),
-- for bin/status and the dashboard. One row per remote: sftp://user@host:port, s3://bucket, smb://server.
CREATE TABLE IF NOT EXISTS remotes (
    remote        TEXT    NOT NULL PRIMARY KEY,
    last_success  REAL,
    last_error    TEXT,
    last_error_at REAL
);

-- ---------------------------------------------------------------------------------------------
-- Audit views. Times are shown in UTC as YYYY-MM-DD HH:MM:SS.SSS.

-- Every transition of every job, oldest first:  SELECT * FROM job_history WHERE job_id = 42;
CREATE VIEW IF NOT EXISTS job_history AS
SELECT e.job_id,
       j.client_folder || '/' || j.file_name          AS file,
       strftime('%Y-%m-%d %H:%M:%f', e.at, 'unixepoch') AS at,
       coalesce(e.from_state, '-')                     AS from_state,
       e.to_state,
       e.actor,
       e.detail
FROM job_events e JOIN jobs j ON j.id = e.job_id
ORDER BY e.job_id, e.id;

-- Jobs detected today (UTC) by client and state:  SELECT * FROM today_by_client;
CREATE VIEW IF NOT EXISTS today_by_client AS
SELECT client_folder AS client, state, count(*) AS jobs
FROM jobs
WHERE detected_at >= unixepoch('now', 'start of day')
GROUP BY client_folder, state
ORDER BY client_folder, state;

-- Failed jobs, newest first, with where the file is now:  SELECT * FROM current_failures;
CREATE VIEW IF NOT EXISTS current_failures AS
SELECT id AS job_id,
       strftime('%Y-%m-%d %H:%M:%S', failed_at, 'unixepoch') AS failed_at,
       client_folder || '/' || file_name                     AS file,
       failed_step AS step,
       attempts,
       last_error  AS reason,
       coalesce(failed_path, archive_path, source_path)     AS file_now
FROM jobs
WHERE state = 'failed'
ORDER BY failed_at DESC;

-- Jobs waiting or in flight, oldest first, with their lease:  SELECT * FROM work_in_progress;
CREATE VIEW IF NOT EXISTS work_in_progress AS
SELECT id AS job_id,
       state,
       client_folder || '/' || file_name                            AS file,
       strftime('%Y-%m-%d %H:%M:%S', detected_at, 'unixepoch')      AS detected_at,
       strftime('%Y-%m-%d %H:%M:%S', next_attempt_at, 'unixepoch')  AS next_attempt_at,
       attempts,
       lease_owner,
       last_error
FROM jobs
WHERE state IN ('detected', 'archived', 'routed')
ORDER BY detected_at;

-- Each file's copies, newest first:  SELECT * FROM delivery_log WHERE file LIKE 'RANK/%';
CREATE VIEW IF NOT EXISTS delivery_log AS
SELECT d.job_id,
       j.client_folder || '/' || j.file_name                         AS file,
       d.name                                                       AS destination,
       d.path,
       d.action,
       strftime('%Y-%m-%d %H:%M:%f', d.delivered_at, 'unixepoch')   AS delivered_at
FROM deliveries d JOIN jobs j ON j.id = d.job_id
ORDER BY d.delivered_at DESC;

-- The last scans:  SELECT * FROM recent_scans LIMIT 5;
CREATE VIEW IF NOT EXISTS recent_scans AS
SELECT id, kind, actor,
       strftime('%Y-%m-%d %H:%M:%S', started_at, 'unixepoch') AS started_at,
       round(finished_at - started_at, 3)                     AS seconds,
       files_seen, jobs_created, slow, timed_out
FROM scans
ORDER BY started_at DESC;
