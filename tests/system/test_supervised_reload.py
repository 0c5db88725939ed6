"""bin/reload on the real programs under a real supervisord: a rule change applies without a restart,
a bad file changes nothing (docs/design.md#changing-the-configuration-live)."""

import subprocess

from conftest import BIN, MATRIX, wait_for
from pipeline import config as config_module
from pipeline.reload import fingerprint
from test_supervised import all_running, installation, start_supervisord, stop  # noqa: F401 - a fixture

NEW_RANK = MATRIX.replace('to = "dest/Monday Rank"', 'to = "dest/Monday Rank NEW"')


def reload(tree, site):
    return subprocess.run([str(BIN / "reload"), "--site", str(site)], env=tree.env(), capture_output=True,
                          text=True, timeout=60)


def running(db):
    """program -> (pid, fingerprint) of every heartbeat."""
    return {p: (pid, c) for p, pid, c in db.run_sql("SELECT program, pid, config FROM heartbeats").fetchall()}


def test_reload_applies_a_route_change_without_a_restart_and_refuses_a_bad_file(tree, db, installation):
    conf = installation / "supervisord.conf"
    proc = start_supervisord(conf, tree.env())
    try:
        wait_for(lambda: all_running(conf, 7), timeout=30, interval=0.3, message="7 programs RUNNING")
        wait_for(lambda: len(running(db)) == 7, timeout=30, message="7 heartbeats")
        before = running(db)
        pids = {p: pid for p, (pid, _) in before.items()}

        tree.write_config(routes=NEW_RANK)
        new = fingerprint(config_module.load(tree.config_path))
        done = reload(tree, installation)
        assert done.returncode == 0, done.stderr
        assert "signalled" in done.stdout
        wait_for(lambda: {c for _, c in running(db).values()} == {new}, timeout=30,
                 message="every program on the new configuration")
        tree.drop("RANK", "after.json")
        wait_for(lambda: (tree.dest("Monday Rank NEW") / "after.json").exists(), message="the new route taken")
        assert not (tree.dest("Monday Rank") / "after.json").exists()
        assert {p: pid for p, (pid, _) in running(db).items()} == pids        # nothing restarted

        good = tree.config_path.read_text()
        tree.config_path.write_text(good.replace("[router]\n", "[router]\nconflict = 'sometimes'\n"))
        refused = reload(tree, installation)
        assert refused.returncode == 78 and "[router] conflict" in refused.stderr
        assert "nothing signalled" in refused.stderr and "signalled" not in refused.stdout
        # HUP anyway: nothing changes, and status says the file is invalid.
        subprocess.run([str(BIN.parent / ".venv" / "bin" / "supervisorctl"), "-c", str(conf), "signal", "HUP", "all"],
                       capture_output=True, timeout=30)
        wait_for(lambda: db.run_sql("SELECT count(*) FROM config_problems").fetchone()[0], timeout=30,
                 message="the invalid file recorded")
        status = subprocess.run([str(BIN / "status")], env=tree.env(), capture_output=True, text=True, timeout=60)
        assert "WARNING   the config on disk is invalid since" in status.stdout and "[router] conflict" in status.stdout
        tree.drop("RANK", "during.json")
        wait_for(lambda: (tree.dest("Monday Rank NEW") / "during.json").exists(), message="routed as before")
        assert running(db) == {p: (pid, new) for p, pid in pids.items()}
        assert all_running(conf, 7)

        tree.config_path.write_text(good)
        assert reload(tree, installation).returncode == 0
        wait_for(lambda: not db.run_sql("SELECT count(*) FROM config_problems").fetchone()[0], timeout=30,
                 message="the warning gone")
        status = subprocess.run([str(BIN / "status")], env=tree.env(), capture_output=True, text=True, timeout=60)
        assert "config on disk is invalid" not in status.stdout
        assert {p: pid for p, (pid, _) in running(db).items()} == pids
    finally:
        assert stop(proc) == 0
