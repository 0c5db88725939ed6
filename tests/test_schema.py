"""pipeline/store/sqlite.sql is the source of truth; the peewee models must match it column for column."""

import shutil
import sqlite3
from pathlib import Path

import peewee
import pytest

from pipeline import store
from pipeline.store import sqlite
from pipeline.store.models import MODELS, ConfigProblem

_AFFINITY = {peewee.TextField: "TEXT", peewee.IntegerField: "INTEGER", peewee.FloatField: "REAL",
             peewee.AutoField: "INTEGER", peewee.ForeignKeyField: "INTEGER"}


def _schema_tables(conn) -> dict[str, list[tuple]]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {name: [(c[1], c[2].upper(), bool(c[3]), c[5] > 0)
                   for c in conn.execute(f"PRAGMA table_info({name})")] for name in names}


def _model_columns(model) -> list[tuple]:
    pk_fields = {f.name for f in model._meta.get_primary_keys()}
    columns = []
    for field in model._meta.sorted_fields:
        affinity = next(a for cls, a in _AFFINITY.items() if isinstance(field, cls))
        not_null = not field.null
        is_pk = field.name in pk_fields
        # SQLite reports an INTEGER PRIMARY KEY as nullable (it is the rowid alias).
        if isinstance(field, peewee.AutoField):
            not_null = False
        columns.append((field.column_name, affinity, not_null, is_pk))
    return columns


@pytest.fixture
def schema_conn(tmp_path):
    conn = sqlite3.connect(tmp_path / "schema.db")
    conn.executescript(sqlite.schema_script())
    yield conn
    conn.close()


def test_every_table_has_a_model_and_every_model_a_table(schema_conn):
    tables = set(_schema_tables(schema_conn))
    models = {m._meta.table_name for m in MODELS}
    assert tables == models


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.table_name)
def test_model_columns_match_schema(schema_conn, model):
    schema = _schema_tables(schema_conn)[model._meta.table_name]
    assert sorted(_model_columns(model)) == sorted(schema)


def test_audit_views_run_on_an_empty_database(schema_conn):
    views = [r[0] for r in schema_conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")]
    assert {"job_history", "today_by_client", "current_failures", "work_in_progress",
            "delivery_log", "recent_scans"} <= set(views)
    for view in views:
        schema_conn.execute(f"SELECT * FROM {view}").fetchall()


@pytest.mark.sqlite_only
def test_connect_sets_wal_and_pragmas(tree):
    database = store.connect(tree.config.paths.database)
    try:
        pragma = lambda name: database.run_sql(f"PRAGMA {name}").fetchone()[0]
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1          # NORMAL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == sqlite.BUSY_TIMEOUT_MS
        assert pragma("user_version") == sqlite.SCHEMA_VERSION
    finally:
        database.close()


def test_connect_refuses_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "pipeline.db"
    bad.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(store.DatabaseUnusable, match="pipeline.db"):
        store.connect(bad)


def test_filesystem_type_finds_the_mount(tmp_path):
    assert sqlite.filesystem_type(tmp_path / "missing" / "pipeline.db") not in ("", "unknown")


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _rows(path: Path, tables) -> dict[str, list[tuple]]:
    """Every row of ``tables`` (a name -> the columns it had), those columns only: an upgrade may
    add columns, and must keep every value of the others."""
    conn = sqlite3.connect(path)
    try:
        # Sorted here rather than by rowid: tallies is a WITHOUT ROWID table.
        return {t: sorted(conn.execute(f"SELECT {', '.join(columns)} FROM {t}").fetchall(), key=repr)
                for t, columns in tables.items()}
    finally:
        conn.close()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8])
def test_a_database_of_an_earlier_release_is_upgraded_in_place_with_every_row_kept(tree, schema_conn, version):
    """schema-vN.db was made by the release of schema N (scanner and router --once on three files:
    two routed, one failed at validate). Every later schema change adds such a file."""
    path = tree.config.paths.database
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / f"schema-v{version}.db", path)
    conn = sqlite3.connect(path)
    old_version = conn.execute("PRAGMA user_version").fetchone()[0]
    old_tables = {name: [c[0] for c in columns] for name, columns in _schema_tables(conn).items()}
    conn.close()
    assert old_version == version
    before = _rows(path, old_tables)
    assert len(before["jobs"]) == 3 and before["job_events"]

    store.connect(path).close()

    assert _rows(path, old_tables) == before
    upgraded = sqlite3.connect(path)
    try:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == sqlite.SCHEMA_VERSION
        assert _schema_tables(upgraded) == _schema_tables(schema_conn)
        objects = "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1, 2"
        assert upgraded.execute(objects).fetchall() == schema_conn.execute(objects).fetchall()
        # The state check takes the states added since (SQLite cannot ALTER a CHECK: its text is widened).
        upgraded.execute("UPDATE jobs SET state = 'held' WHERE id = 1")
        upgraded.execute("UPDATE jobs SET state = 'dismissed' WHERE id = 2")
        with pytest.raises(sqlite3.IntegrityError):
            upgraded.execute("UPDATE jobs SET state = 'nonsense' WHERE id = 3")
        assert upgraded.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        upgraded.rollback()
    finally:
        upgraded.close()

    # The upgraded file carries on: a new job is numbered after the old ones and flows.
    tree.drop("RANK", "after-upgrade.json")
    tree.age(tree.hot / "RANK" / "after-upgrade.json")
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    assert (tree.dest("Monday Rank") / "after-upgrade.json").exists()
    jobs = sqlite3.connect(path).execute("SELECT id, state FROM jobs ORDER BY id").fetchall()
    assert [j[0] for j in jobs] == [1, 2, 3, 4] and jobs[3][1] in ("routed", "done")


# -- PostgreSQL: postgres.sql matches the models as sqlite.sql does ----------------------------------

_PG_TYPE = {peewee.TextField: "text", peewee.IntegerField: "bigint", peewee.FloatField: "double precision",
            peewee.AutoField: "bigint", peewee.ForeignKeyField: "bigint"}


@pytest.fixture
def pg(database):
    db = store.connect(database)
    yield db
    db.close()


def _pg_tables(db) -> dict[str, list[tuple]]:
    rows = db.execute_sql("""
        SELECT c.table_name, c.column_name, c.data_type, c.is_nullable = 'NO',
               EXISTS (SELECT 1 FROM information_schema.key_column_usage k
                       JOIN information_schema.table_constraints tc
                         ON tc.constraint_name = k.constraint_name AND tc.table_schema = k.table_schema
                       WHERE tc.constraint_type = 'PRIMARY KEY' AND k.table_schema = c.table_schema
                         AND k.table_name = c.table_name AND k.column_name = c.column_name)
        FROM information_schema.columns c JOIN information_schema.tables t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
          AND c.table_name <> 'pipeline_schema'""").fetchall()
    tables: dict[str, list[tuple]] = {}
    for table, column, data_type, not_null, is_pk in rows:
        tables.setdefault(table, []).append((column, data_type, bool(not_null), bool(is_pk)))
    return tables


def _pg_model_columns(model) -> list[tuple]:
    pk_fields = {f.name for f in model._meta.get_primary_keys()}
    return [(f.column_name, next(a for cls, a in _PG_TYPE.items() if isinstance(f, cls)),
             not f.null or f.name in pk_fields, f.name in pk_fields) for f in model._meta.sorted_fields]


@pytest.mark.postgresql_only
def test_postgresql_tables_match_the_models_column_for_column(pg):
    tables = _pg_tables(pg)
    assert set(tables) == {m._meta.table_name for m in MODELS}
    for model in MODELS:
        assert sorted(tables[model._meta.table_name]) == sorted(_pg_model_columns(model)), model._meta.table_name


@pytest.mark.postgresql_only
def test_postgresql_has_the_same_audit_views_and_they_run(pg):
    views = {r[0] for r in pg.execute_sql(
        "SELECT table_name FROM information_schema.views WHERE table_schema = current_schema()")}
    assert views == {"job_history", "today_by_client", "current_failures", "work_in_progress",
                     "delivery_log", "recent_scans"}
    for view in views:
        pg.execute_sql(f"SELECT * FROM {view}").fetchall()


@pytest.mark.postgresql_only
def test_postgresql_claims_read_the_queue_indexes_on_next_attempt_at_and_id(pg):
    indexes = dict(pg.execute_sql(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()").fetchall())
    assert "(next_attempt_at, id) WHERE (state = ANY" in indexes["jobs_route_queue"]
    assert "(next_attempt_at, id) WHERE (state = 'routed'" in indexes["jobs_notify_queue"]
    assert indexes["jobs_one_appearance"].startswith("CREATE UNIQUE INDEX")


@pytest.mark.postgresql_only
def test_connecting_again_leaves_the_schema_as_it_is(pg, database):
    store.connect(database).close()         # the version is current: nothing is applied again
    assert pg.execute_sql("SELECT count(*), max(version) FROM pipeline_schema").fetchone() == (1, sqlite.SCHEMA_VERSION)


def test_a_database_from_a_newer_release_is_refused_and_left_as_it_is(tree, db, database):
    """A downgrade after an upgrade must not write into tables the code does not fully know."""
    newer = sqlite.SCHEMA_VERSION + 1
    if tree.engine == "sqlite":
        db.execute_sql(f"PRAGMA user_version = {newer}")
    else:
        db.execute_sql("UPDATE pipeline_schema SET version = %s", (newer,))
    db.close()
    location = tree.config.paths.database
    with pytest.raises(store.DatabaseUnusable, match=f"schema is version {newer}, from a newer release"):
        store.connect(location)
    proc = tree.run("status", check=False)
    assert proc.returncode == 69 and "from a newer release" in proc.stderr
    if tree.engine == "sqlite":          # nothing was applied over it
        assert sqlite3.connect(location).execute("PRAGMA user_version").fetchone() == (newer,)


@pytest.mark.postgresql_only
def test_postgresql_connections_compile_no_plan_just_in_time(pg):
    """JIT compiling took 0.3 s for the overview's 10 ms hourly chart (a misestimated range join)."""
    assert pg.execute_sql("SHOW jit").fetchone() == ("off",)


@pytest.mark.postgresql_only
def test_a_postgresql_database_of_schema_8_takes_the_steering_states_and_columns(pg, database):
    """A jobs table as schema 8 made it (its state check without held and dismissed, none of the
    steering columns) is widened in place by the next start."""
    pg.execute_sql("ALTER TABLE jobs DROP CONSTRAINT jobs_state_check")
    pg.execute_sql("ALTER TABLE jobs ADD CONSTRAINT jobs_state_check "
                   "CHECK (state IN ('detected', 'archived', 'routed', 'notified', 'failed'))")
    for column in ("waits_on", "released_at", "dismissed_at"):
        pg.execute_sql(f"ALTER TABLE jobs DROP COLUMN {column}")
    pg.execute_sql("DROP TABLE redelivered, redeliveries, pauses, steering_events")
    pg.execute_sql("UPDATE pipeline_schema SET version = 8")
    pg.execute_sql("INSERT INTO jobs (uuid, state, source_path, client_folder, file_name, size, mtime_ns, ctime_ns, "
                   "device, inode, detected_by, detected_at, updated_at, next_attempt_at) "
                   "VALUES ('u1', 'failed', '/h/A/a.json', 'A', 'a.json', 1, 1, 1, 1, 1, 'startup', 1, 1, 1)")
    pg.close()

    store.connect(database).close()

    upgraded = store.connect(database)
    try:
        assert upgraded.execute_sql("SELECT max(version) FROM pipeline_schema").fetchone() == (sqlite.SCHEMA_VERSION,)
        upgraded.execute_sql("UPDATE jobs SET state = 'dismissed', dismissed_at = 2, waits_on = NULL")
        assert upgraded.execute_sql("SELECT state FROM jobs").fetchall() == [("dismissed",)]
        assert {m._meta.table_name for m in MODELS} == set(_pg_tables(upgraded))
    finally:
        upgraded.close()


@pytest.mark.postgresql_only
def test_a_postgresql_database_of_version_8_is_upgraded_in_place(pg, database):
    """Version 9 added heartbeats.config and config_since and the config_problems table: a version 8
    database (made here by taking them away) gets them, its heartbeats kept."""
    pg.execute_sql("DROP TABLE config_problems")
    pg.execute_sql("ALTER TABLE heartbeats DROP COLUMN config, DROP COLUMN config_since")
    pg.execute_sql("INSERT INTO heartbeats (program, host, pid, started_at, beat_at) VALUES ('router_00', 'h', 1, 1, 2)")
    pg.execute_sql("UPDATE pipeline_schema SET version = 8")
    store.connect(database).close()
    assert pg.execute_sql("SELECT max(version) FROM pipeline_schema").fetchone() == (sqlite.SCHEMA_VERSION,)
    assert sorted(_pg_tables(pg)["config_problems"]) == sorted(_pg_model_columns(ConfigProblem))
    assert pg.execute_sql("SELECT program, pid, config, config_since FROM heartbeats").fetchall() == \
        [("router_00", 1, "", 0)]


def test_a_database_of_schema_14_or_15_gets_daily_figures_in_place_with_its_rows_kept(tree, db, database):
    """Version 16 added daily_figures; the schema is applied by creating what is missing, so it
    comes the same over a 14 (made here by taking it away) or a 15."""
    db.run_sql("DROP TABLE daily_figures")
    with db.write():
        db.run_sql("INSERT INTO config_reloads (requested_at, host, actor) VALUES (1, 'h', 'ops@h')")
    if tree.engine == "sqlite":
        db.execute_sql("PRAGMA user_version = 14")
    else:
        db.execute_sql("UPDATE pipeline_schema SET version = 14")
    db.close()

    upgraded = store.connect(tree.config.paths.database)
    try:
        if tree.engine == "sqlite":
            assert upgraded.execute_sql("PRAGMA user_version").fetchone() == (sqlite.SCHEMA_VERSION,)
        else:
            assert upgraded.execute_sql("SELECT max(version) FROM pipeline_schema").fetchone() == (sqlite.SCHEMA_VERSION,)
        assert upgraded.run_sql("SELECT host, actor FROM config_reloads").fetchall() == [("h", "ops@h")]
        with upgraded.write():
            upgraded.run_sql("INSERT INTO daily_figures (zone, day, jobs, p50, p95, measured_at) "
                             "VALUES ('Europe/London', '2026-07-15', 2, 60, 120, 1)")
        assert upgraded.run_sql("SELECT day, jobs, p50 FROM daily_figures").fetchall() == [("2026-07-15", 2, 60)]
    finally:
        upgraded.close()
