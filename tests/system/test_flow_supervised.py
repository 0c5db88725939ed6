"""A stalled RIP under the real programs and a real supervisord (docs/design.md#flow-control): its
hot folder, which nobody empties, holds our copies at max_waiting while the jobs' other copies go
on; a consumer that starts taking files releases the rest, in detection order, never more than
max_waiting in the folder."""

import subprocess
import sys
import time

from conftest import job_document, wait_for
from test_flow import RIP
from pipeline.store.models import Delivery, Job
from test_supervised import all_running, installation, set_routers, start_supervisord, stop  # noqa: F401 (a fixture)

ROUTES = RIP         # a RIP that takes 3 files at most, and a proof folder beside it

# The next application: every 0.3 s it takes the oldest job file from its folder, writing down
# what it took and how many files it saw there.
CONSUMER = """
import os, sys, time
folder, log = sys.argv[1], sys.argv[2]
while True:
    names = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    if names:
        oldest = min(names, key=lambda n: os.stat(os.path.join(folder, n)).st_mtime_ns)
        os.unlink(os.path.join(folder, oldest))
        with open(log, "a") as f:
            f.write(f"{len(names)} {oldest}\\n")
    time.sleep(0.3)
"""

JOBS = 8


def test_a_stalled_rip_holds_our_copies_at_max_waiting_and_a_consumer_releases_them_in_order(tree, db, installation):
    tree.write_config(routes=ROUTES)
    rip, log = tree.dest("RIP"), tree.root / "consumed.log"
    rip.mkdir(parents=True)
    conf = installation / "supervisord.conf"
    set_routers(conf, 1)        # in detection order: copies released together may cross between routers
                                # (the limit holds for several: test_flow.test_two_routers_...)
    proc = start_supervisord(conf, tree.env())
    consumer = None
    try:
        wait_for(lambda: all_running(conf, 6), timeout=30, interval=0.3, message="6 programs RUNNING")
        for i in range(JOBS):
            tree.drop("RANK", f"rank{i}.json", job_document("RANK"))
            time.sleep(0.05)

        wait_for(lambda: len(tree.files(tree.dest("Proof"))) == JOBS, message="every Proof copy made")
        wait_for(lambda: Job.select().where(Job.waits_on == "full:RIP-1").count() == JOBS - 3,
                 message="the copies beyond max_waiting waiting on the full folder")
        time.sleep(2)           # nobody empties the RIP's folder: it stays at max_waiting
        assert len(list(rip.iterdir())) == 3
        assert {j.attempts for j in Job.select()} == {0}
        status = tree.run("status", check=False).stdout
        assert "parked    RIP-1 full: 5 job(s) wait" in status

        consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, str(rip), str(log)])
        wait_for(lambda: Job.select().where(Job.state == "routed").count() == JOBS, timeout=60,
                 message="every job routed once the consumer takes files")
        wait_for(lambda: len(log.read_text().splitlines()) == JOBS, message="the consumer took every copy")
        taken = [line.split() for line in log.read_text().splitlines()]
        assert max(int(seen) for seen, _ in taken) <= 3, "never more than max_waiting in the folder"
        detected = [j.file_name for j in Job.select().order_by(Job.id)]
        delivered = [d.path.rsplit("/", 1)[1] for d in
                     Delivery.select().where(Delivery.name == "RIP-1").order_by(Delivery.delivered_at, Delivery.job)]
        assert delivered == detected, "copies went into the RIP's folder in detection order"
        assert list((tree.hot / "RANK").iterdir()) == []
    finally:
        if consumer is not None:
            consumer.kill()
            consumer.wait()
        stop(proc)
