"""A paused destination under the real programs and a real supervisord (docs/design.md#steering):
its jobs wait, archived, with their originals in the hot folder, while other jobs flow, and go on by
themselves when the pause's --until comes."""

import datetime as dt
import time

from conftest import job_document, wait_for
from pipeline.store.models import Job
from test_supervised import all_running, installation, start_supervisord, stop  # noqa: F401 (a fixture)


def test_a_paused_destinations_jobs_wait_while_others_flow_and_resume_by_themselves_at_until(tree, db, installation):
    conf = installation / "supervisord.conf"
    proc = start_supervisord(conf, tree.env())
    try:
        wait_for(lambda: all_running(conf, 7), timeout=30, interval=0.3, message="7 programs RUNNING")
        until = time.time() + 10
        stamp = dt.datetime.fromtimestamp(until, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
        tree.run("pause", "--destination", "Monday Rank", "--until", stamp, "--reason", "printer maintenance")
        for i in range(3):
            tree.drop("RANK", f"rank{i}.json", job_document("RANK"))
            tree.drop("LOREAL", f"loreal{i}.json", job_document("LOREAL"))

        wait_for(lambda: Job.select().where(Job.state == "routed").count() == 3, message="the LOREAL jobs routed")
        wait_for(lambda: Job.select().where(Job.waits_on == "destination:Monday Rank").count() == 3,
                 message="the RANK jobs waiting on the pause")
        assert sorted(p.name for p in (tree.hot / "RANK").iterdir()) == ["rank0.json", "rank1.json", "rank2.json"]
        assert not tree.dest("Monday Rank").exists() or not list(tree.dest("Monday Rank").iterdir())
        assert {j.attempts for j in Job.select().where(Job.client_folder == "RANK")} == {0}
        status = tree.run("status", "--nagios", check=False)
        assert status.returncode == 1 and "paused: destination 'Monday Rank'" in status.stdout
        assert "stuck=0;" in status.stdout
        assert time.time() < until, "the checks above took longer than the pause: lengthen it"

        wait_for(lambda: Job.select().where(Job.state == "routed").count() == 6, timeout=until - time.time() + 15,
                 message="the RANK jobs routed once the pause ended")
        routed_at = max(j.routed_at for j in Job.select().where(Job.client_folder == "RANK"))
        assert until <= routed_at < until + 5
        assert sorted(p.name for p in tree.dest("Monday Rank").iterdir()) == ["rank0.json", "rank1.json", "rank2.json"]
        assert list((tree.hot / "RANK").iterdir()) == []
    finally:
        stop(proc)
