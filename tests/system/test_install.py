"""A non-editable install works: the package carries its schema and templates, nothing reads the source tree.

The wheel is built from a copy of this checkout (setuptools' build/ folder in the checkout itself would
keep modules that were moved or deleted since) without build isolation, and installed without dependencies into
a fresh virtual environment (no network); the dependencies come from the test environment's
site-packages through a plain path entry, so ``pipeline`` itself can only come from the wheel.
"""

from __future__ import annotations

import json
import re
import signal
import os
import zipfile
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import BASE_CONFIG, MATRIX, ROOT, job_document, wait_for
from helpers.smtp_server import free_port

# One worker runs this module's tests (bin/test runs them in parallel): the wheel and the virtual
# environment are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("install")


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "var", "*.egg-info",
                                                               "__pycache__", ".pytest_cache", ".hypothesis"))
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", work / "dist", source)
    built, = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> Path:
    """The python of a fresh virtual environment with the project's wheel installed in it."""
    work = tmp_path_factory.mktemp("install")
    _run(sys.executable, "-m", "venv", "--without-pip", work / "venv")
    python = work / "venv" / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel)
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    # Only a path entry: .pth files in the test environment (its editable install of this checkout)
    # are not processed, so they cannot make the source tree importable.
    (purelib / "test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_the_installed_package_runs_from_another_folder_without_the_source_tree(installed, tmp_path):
    site_dir = tmp_path / "site"
    (site_dir / "hot" / "RANK").mkdir(parents=True)
    (site_dir / "pipeline.toml").write_text(f"{BASE_CONFIG}\n[detect]\nmin_file_age = 0\n{MATRIX}")
    (site_dir / "hot" / "RANK" / "a.json").write_text(json.dumps(job_document("RANK")))
    env = {"PATH": "/usr/bin:/bin", "PIPELINE_CONFIG": str(site_dir / "pipeline.toml")}

    where = _run(installed, "-c", "import pipeline; print(pipeline.__file__)", cwd=site_dir, env=env).stdout
    assert str(installed.parent.parent) in where and str(ROOT) not in where
    for program in ("pipeline.scanner", "pipeline.router"):
        _run(installed, "-m", program, "--once", cwd=site_dir, env=env)
    assert (site_dir / "dest" / "Monday Rank" / "a.json").exists()
    assert not (site_dir / "hot" / "RANK" / "a.json").exists()
    # The report's templates are package data too.
    _run(installed, "-c", "from pipeline.reporting import render; render._env.get_template('report.html.j2')",
         cwd=site_dir, env=env)


def _assets(folder: str, pattern: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob(pattern)}


def test_the_wheel_carries_every_wing_s_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = ({"pipeline/store/sqlite.sql", "pipeline/store/postgres.sql"}
              | _assets("pipeline/reporting/templates", "*.j2")
              | _assets("pipeline/web/templates", "*.html")
              | _assets("pipeline/web/static", "*")
              | {"pipeline/commands/site/supervisord.conf", "pipeline/commands/site/pipeline.example.toml"})
    assert len(wanted) > 10 and wanted - names == set()


def test_the_packaged_sqlite_schema_is_the_top_level_schema_sql(wheel):
    """schema.sql is the one source of SQLite's DDL; the package carries the same text."""
    packaged = zipfile.ZipFile(wheel).read("pipeline/store/sqlite.sql").decode("utf-8")
    assert packaged == (ROOT / "schema.sql").read_text(encoding="utf-8")
    assert "CREATE TABLE" in packaged and "jobs" in packaged


@pytest.mark.postgresql_only
def test_the_installed_package_opens_postgresql(installed, database, tmp_path):
    """postgres.sql is package data: an installed copy creates its schema on a real server."""
    script = "import sys; from pipeline import store; print(store.connect(sys.argv[1]).run_sql('SELECT count(*) FROM jobs').fetchone()[0])"
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": os.environ.get("PGPASSWORD", "")}
    assert _run(installed, "-c", script, database, cwd=tmp_path, env=env).stdout.strip() == "0"


def test_hotfolder_init_makes_a_site_that_starts_and_routes(installed, database, tmp_path):
    """pip install, ``hotfolder init``, ``hotfolder start``: a file dropped in routes, on either engine."""
    hotfolder = installed.parent / "hotfolder"
    assert hotfolder.is_file()                              # pip made the console command
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": os.environ.get("PGPASSWORD", ""), "HOME": str(tmp_path)}
    assert _run(hotfolder, "--version", env=env).stdout.startswith("hotfolder ")
    site = tmp_path / "site"
    _run(hotfolder, "init", site, env=env)
    config = site / "pipeline.toml"
    text = config.read_text()
    if database != "pipeline.db":
        text = text.replace('database   = "var/pipeline.db"', f'database   = "{database}"')
    text = re.sub(r'listen       = "127.0.0.1:8750"', f'listen       = "127.0.0.1:{free_port()}"', text)
    config.write_text(text)
    assert "hotfolder scanner" in (site / "supervisord.conf").read_text()

    log = open(tmp_path / "start.log", "wb")
    start = subprocess.Popen([hotfolder, "start"], cwd=site, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        (site / "data" / "JSON" / "RANK").mkdir()
        dropped = site / "data" / "JSON" / "RANK" / "first.json"
        (site / "data" / "JSON" / "RANK" / ".first.json").write_text(json.dumps(job_document("RANK")))
        os.rename(site / "data" / "JSON" / "RANK" / ".first.json", dropped)
        routed = site / "data" / "SYNC" / "MAKE" / "Monday Rank" / "first.json"
        deadline = time.monotonic() + 90
        while not (routed.exists() and not dropped.exists()) and time.monotonic() < deadline:
            assert start.poll() is None, (tmp_path / "start.log").read_text()
            time.sleep(0.2)
        assert routed.exists() and not dropped.exists(), (tmp_path / "start.log").read_text()
        # The original goes before the router commits "routed" (its last transaction): ask until it is there.
        status = lambda: subprocess.run([hotfolder, "status"], cwd=site, env=env, capture_output=True, text=True,
                                        timeout=60)
        wait_for(lambda: "routed 1" in status().stdout, timeout=30, message="bin/status to show the job routed")
    finally:
        start.send_signal(signal.SIGTERM)
        start.wait(timeout=120)
        log.close()
