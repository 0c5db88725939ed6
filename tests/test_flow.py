"""Flow control toward the next application (docs/design.md#flow-control): a route's max_waiting
and its hours and days. Real folders, a real database, the real router with an injected clock."""

import datetime as dt
import os
import re
import time
import zoneinfo

import pytest

from conftest import FakeClock, job_document
from pipeline import config as config_module, flow, health, waits
from pipeline.commands import status as status_command
from pipeline.config import ConfigError
from pipeline.convert import window
from pipeline.jobs import Jobs
from pipeline.reporting import alerts
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.web import app as web_app

LONDON = zoneinfo.ZoneInfo("Europe/London")
EVERY_DAY = frozenset(range(7))
WEEKDAYS = frozenset(range(5))

RIP = """
[[route]]
name = "RIP-1"
clients = ["RANK"]
to = "dest/RIP"
max_waiting = 3

[[route]]
name = "Proof"
clients = ["RANK"]
to = "dest/Proof"
"""

NIGHT = """
[[route]]
name = "Press"
clients = ["RANK"]
to = "dest/Press"
hours = "06:00-22:00"
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[route]]
name = "Proof"
clients = ["RANK"]
to = "dest/Proof"
"""


def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


def job(db, name: str) -> dict:
    cursor = db.run_sql("SELECT id, state, attempts, waits_on, next_attempt_at FROM jobs WHERE file_name = ?", (name,))
    return dict(zip([c[0] for c in cursor.description], cursor.fetchone()))


def drop_aged(tree, name: str):
    path = tree.drop("RANK", name, job_document("RANK"))
    tree.age(path)
    return path


# -- the window -------------------------------------------------------------------------------------

@pytest.mark.parametrize("now, hours, days, opens", [
    # open: nothing to wait for
    (utc(2027, 1, 15, 12, 0), "06:00-22:00", EVERY_DAY, None),
    # closed in the evening: opens the next morning
    (utc(2027, 1, 15, 23, 0), "06:00-22:00", EVERY_DAY, utc(2027, 1, 16, 6, 0)),
    # across midnight: open just after it, and until its end in the morning
    (utc(2027, 1, 15, 23, 30), "22:00-06:00", EVERY_DAY, None),
    (utc(2027, 1, 16, 5, 59), "22:00-06:00", EVERY_DAY, None),
    (utc(2027, 1, 16, 6, 0), "22:00-06:00", EVERY_DAY, utc(2027, 1, 16, 22, 0)),
    # Friday 2027-01-15 evening, weekdays only: opens on Monday
    (utc(2027, 1, 15, 22, 30), "06:00-22:00", WEEKDAYS, utc(2027, 1, 18, 6, 0)),
    # an overnight window starting on Friday still runs on Saturday morning
    (utc(2027, 1, 16, 3, 0), "22:00-06:00", WEEKDAYS, None),
    # spring forward (Europe/London, 2027-03-28 01:00 UTC): 06:00 BST is 05:00 UTC
    (utc(2027, 3, 27, 23, 0), "06:00-22:00", EVERY_DAY, utc(2027, 3, 28, 5, 0)),
    # an overnight window that spans the change ends at 06:00 BST, 05:00 UTC
    (utc(2027, 3, 28, 4, 59), "22:00-06:00", EVERY_DAY, None),
    (utc(2027, 3, 28, 5, 0), "22:00-06:00", EVERY_DAY, utc(2027, 3, 28, 21, 0)),
    # fall back (2027-10-31 01:00 UTC): 06:00 GMT is 06:00 UTC, an hour later than the day before
    (utc(2027, 10, 30, 21, 30), "06:00-22:00", EVERY_DAY, utc(2027, 10, 31, 6, 0)),
    (utc(2027, 10, 31, 5, 30), "22:00-06:00", EVERY_DAY, None),
    (utc(2027, 10, 31, 6, 0), "22:00-06:00", EVERY_DAY, utc(2027, 10, 31, 22, 0)),
    # whole days on weekdays touch across midnight and make one window, Friday to Monday shut
    (utc(2027, 1, 16, 0, 0), "00:00-24:00", WEEKDAYS, utc(2027, 1, 18, 0, 0)),
    (utc(2027, 1, 13, 23, 59), "00:00-24:00", WEEKDAYS, None),
])
def test_a_window_opens_across_midnight_and_both_daylight_saving_changes(now, hours, days, opens):
    assert flow.opens_at(window(hours), days, LONDON, now) == opens


# -- counting a folder --------------------------------------------------------------------------------

def test_only_regular_visible_files_are_counted_and_a_missing_folder_holds_none(tmp_path):
    folder = tmp_path / "rip"
    assert flow.count_files(folder, 10) == 0
    folder.mkdir()
    for name in ("a.json", "b.pdf", ".hidden", ".a.json.tmp"):
        (folder / name).write_text("x")
    (folder / "sub").mkdir()
    (folder / "link").symlink_to(folder / "a.json")
    assert flow.count_files(folder, 10) == 2


def test_a_folder_of_100000_files_is_counted_only_up_to_max_waiting(tmp_path, monkeypatch):
    folder = tmp_path / "rip"
    folder.mkdir()
    for i in range(100_000):
        os.close(os.open(folder / f"{i:06d}.json", os.O_CREAT | os.O_WRONLY, 0o644))
    looked = []
    real_scandir = os.scandir

    class Counting:
        def __init__(self, path):
            self.inner = real_scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def __iter__(self):
            for entry in self.inner:
                looked.append(entry.name)
                yield entry

    monkeypatch.setattr(flow.os, "scandir", Counting)
    assert flow.count_files(folder, 50) == 50
    assert len(looked) == 50, "counting stops at max_waiting"


# -- the router ----------------------------------------------------------------------------------------

def test_a_full_folder_holds_its_copies_while_the_other_destination_goes_on_and_releases_them_in_order(tree, db):
    clock = FakeClock()
    tree.write_config(routes=RIP)
    rip = tree.dest("RIP")
    rip.mkdir(parents=True)
    (rip / "someone-else.pdf").write_text("put there by another program")
    (rip / ".rip.lock").write_text("hidden: not counted")
    names = [f"job{i}.json" for i in range(1, 6)]
    originals = [drop_aged(tree, name) for name in names]
    jobs = Jobs(db, "test:1", clock)
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)

    in_order = sorted(names, key=lambda n: job(db, n)["id"])
    assert sorted(tree.files(tree.dest("Proof"))) == sorted(names), "the other destination goes on"
    assert sorted(p.name for p in rip.iterdir() if not p.name.startswith(".")) == \
        sorted(["someone-else.pdf"] + in_order[:2]), "no more than max_waiting in the folder"
    for name in in_order[2:]:
        waiting = job(db, name)
        assert waiting["state"] == "archived" and waiting["attempts"] == 0
        assert waiting["waits_on"] == "full:RIP-1"
        assert waiting["next_attempt_at"] == clock() + flow.FULL_RECHECK, "looked at again within a second"
    assert all(o.exists() for o in originals if o.name in in_order[2:]), "the original stays until every copy"
    detail = db.run_sql("SELECT detail FROM job_events WHERE job_id = ? ORDER BY id DESC",
                        (job(db, in_order[2])["id"],)).fetchone()[0]
    assert detail == "waits: RIP-1 holds 3 files, max_waiting 3"
    groups = {(g.cause, g.destination): g.jobs for g in waits.waiting(db, ["RIP-1", "Proof"], notify=False)}
    assert groups == {("full", "RIP-1"): 3}
    assert waits.destination_state(waits.Destination("RIP-1", {"full": None})) == "full"
    clock.advance(86400)
    assert alerts.stuck(db, clock(), 60, notify=False)[0] == 0, "waiting on a full folder is not stuck"

    Router(tree.config, jobs).run(once=True)        # still full: nothing moves
    assert [job(db, n)["state"] for n in in_order[2:]] == ["archived"] * 3

    (rip / "someone-else.pdf").unlink()             # the RIP takes one file: room for the next, in order
    clock.advance(flow.FULL_RECHECK)
    Router(tree.config, jobs).run(once=True)
    assert [job(db, n)["state"] for n in in_order] == ["routed"] * 3 + ["archived"] * 2
    (rip / in_order[0]).unlink()
    (rip / in_order[1]).unlink()
    clock.advance(flow.FULL_RECHECK)
    Router(tree.config, jobs).run(once=True)
    assert [job(db, n)["state"] for n in in_order] == ["routed"] * 5
    assert not any(o.exists() for o in originals)
    assert db.run_sql("SELECT count(*) FROM jobs WHERE waits_on IS NOT NULL").fetchone()[0] == 0


def test_two_routers_feeding_one_folder_together_never_pass_max_waiting(tree, db):
    """Router A has decided its copies and not yet made them when router B counts the folder: B
    must see A's copies on their way (A's places), or the folder gets 6 files for a max_waiting of 3."""
    clock = FakeClock()
    tree.write_config(routes=RIP, router="batch_size = 3\n")
    tree.dest("RIP").mkdir(parents=True)
    names = [f"job{i}.json" for i in range(1, 7)]
    for name in names:
        drop_aged(tree, name)
    Scanner(tree.config, Jobs(db, "test:0", clock)).scan("periodic", "periodic")
    # batch_size 3: each router claims half of the 6 jobs
    first, second = Router(tree.config, Jobs(db, "test:1", clock)), Router(tree.config, Jobs(db, "test:2", clock))
    first_copies = first._copy_all

    def second_router_first(works):
        assert second.run_batch() == 3, "the other router takes the other half meanwhile"
        first_copies(works)

    first._copy_all = second_router_first
    first.run_batch()
    for router in (second, first):      # a full batch is settled with the next one, or at the stop
        router.drain()

    in_order = sorted(names, key=lambda n: job(db, n)["id"])
    assert sorted(tree.files(tree.dest("RIP"))) == sorted(in_order[:3])
    assert sorted(tree.files(tree.dest("Proof"))) == sorted(names), "the other destination goes on"
    assert [job(db, n)["waits_on"] for n in in_order[3:]] == ["full:RIP-1"] * 3
    assert db.run_sql("SELECT count(*) FROM places").fetchone()[0] == 0, "each batch gave its places back"


def test_the_places_of_a_router_that_died_expire_with_its_lease(tree, db):
    clock = FakeClock()
    tree.write_config(routes=RIP)
    tree.dest("RIP").mkdir(parents=True)
    places = flow.Places(db)
    folder = tree.dest("RIP")
    assert places.take("dead", clock(), clock() + 5, {folder: (3, 3)}) == {folder: 0}
    assert places.take("alive", clock(), clock() + 5, {folder: (3, 2)}) == {folder: 3}, "all three taken"
    clock.advance(6)
    assert places.take("alive", clock(), clock() + 5, {folder: (3, 2)}) == {folder: 0}, "the dead one's expired"
    (folder / "a.json").write_text("{}")
    assert places.take("third", clock(), clock() + 5, {folder: (3, 2)}) == {folder: 3}, "a file and 2 places"
    places.give_back("alive")
    assert places.take("third", clock(), clock() + 5, {folder: (3, 2)}) == {folder: 1}, "its own places not counted"
    assert db.run_sql("SELECT taken FROM places WHERE owner = 'third'").fetchone()[0] == 2, "what it takes now, in place of before"


def test_a_full_folder_that_disappears_holds_nothing(tree, db):
    clock = FakeClock()
    tree.write_config(routes=RIP)
    rip = tree.dest("RIP")
    rip.mkdir(parents=True)
    for i in range(3):
        (rip / f"old{i}.pdf").write_text("x")
    drop_aged(tree, "late.json")
    jobs = Jobs(db, "test:1", clock)
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)
    assert job(db, "late.json")["waits_on"] == "full:RIP-1"

    for f in rip.iterdir():
        f.unlink()
    rip.rmdir()                 # the folder goes: it holds nothing, the copy goes (the folder made anew)
    clock.advance(flow.FULL_RECHECK)
    Router(tree.config, jobs).run(once=True)
    assert job(db, "late.json")["state"] == "routed"
    assert (rip / "late.json").exists()


def test_outside_its_hours_a_routes_copy_waits_for_the_opening_across_the_spring_change(tree, db):
    clock = FakeClock(utc(2027, 3, 27, 23, 0))      # Saturday 23:00 GMT; the clocks go forward at 01:00
    tree.write_config(routes=NIGHT)
    drop_aged(tree, "night.json")
    jobs = Jobs(db, "test:1", clock)
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)

    waiting = job(db, "night.json")
    assert (tree.dest("Proof") / "night.json").exists()
    assert not (tree.dest("Press") / "night.json").exists()
    assert waiting["waits_on"] == "window:Press" and waiting["attempts"] == 0
    assert waiting["next_attempt_at"] == utc(2027, 3, 28, 5, 0), "06:00 BST"
    groups = {(g.cause, g.destination) for g in waits.waiting(db, ["Press", "Proof"], notify=False)}
    assert groups == {("window", "Press")}

    clock.advance(utc(2027, 3, 28, 5, 0) - clock() - 1)
    Router(tree.config, jobs).run(once=True)
    assert job(db, "night.json")["state"] == "archived"     # not due yet
    clock.advance(1)
    Router(tree.config, jobs).run(once=True)
    assert job(db, "night.json")["state"] == "routed"
    assert (tree.dest("Press") / "night.json").exists()


# -- bad configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("max_waiting = 0", "[[route]] #1 max_waiting: expected a whole number of at least 1, got 0"),
    ('max_waiting = "50"', "max_waiting: expected a whole number"),
    ("max_waiting = true", "max_waiting: expected a whole number"),
    ('hours = "25:00-26:00"', "hours: expected a window"),
    ('hours = "06:00-06:00"', "hours: the window '06:00-06:00' is empty"),
    ('days = ["someday"]', "days: expected days among"),
    ("days = []", "days: expected a non-empty list"),
])
def test_bad_flow_control_values_are_one_line_naming_the_key(tree, line, message):
    with pytest.raises(ConfigError) as e:
        tree.write_config(routes=f'[[route]]\nname = "RIP"\nto = "dest/RIP"\n{line}\n')
    assert message in str(e.value) and "\n" not in str(e.value)


def test_max_waiting_on_a_remote_route_is_refused_naming_the_key(tree):
    with pytest.raises(ConfigError) as e:
        tree.write_config(routes='[[route]]\nname = "Far"\nto = "sftp://press@files.example.com/in"\nmax_waiting = 5\n')
    assert "[[route]] #1 max_waiting: counts the files of a local folder only" in str(e.value)
    assert "\n" not in str(e.value)


def test_hours_and_days_are_read_as_expect_reads_them(tree):
    tree.write_config(routes=NIGHT.replace('days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
                                           'days = ["MON", "fri"]'))
    press = tree.config.routes[0]
    assert press.hours == (360, 1320) and press.days == frozenset({0, 4}) and press.max_waiting is None
    assert press.window_text == "06:00-22:00 on mon,fri"
    assert config_module.load(tree.config_path).routes == tree.config.routes


# -- where the waits show ---------------------------------------------------------------------------------

def test_copies_waiting_on_a_full_folder_show_by_cause_in_status_the_dashboard_and_metrics(tree, db):
    tree.write_config(routes=RIP.replace("max_waiting = 3", "max_waiting = 1"))
    for name in ("first.json", "second.json", "third.json"):
        drop_aged(tree, name)
    jobs = Jobs(db, "test:1")
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)

    status = health.gather(db, tree.config, time.time())
    assert [(p["cause"], p["destination"], p["jobs"]) for p in status["parked"]] == [("full", "RIP-1", 2)]
    assert "parked    RIP-1 full: 2 job(s) wait" in status_command.render_text(status)

    client = web_app.create_app(tree.config, db, environ={}).test_client()
    page = client.get("/destinations").get_data(as_text=True).replace("<wbr>", "")
    [row] = [r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if ">RIP-1<" in r]
    assert ">full<" in row and re.search(r'class="count-bad">2<', row)
    page = client.get("/waiting").get_data(as_text=True).replace("<wbr>", "")
    sections = dict(re.findall(r'<section id="full-([^"]+)">(.*?)</section>', page, re.S))
    assert set(sections) == {"RIP-1"} and "second.json" in sections["RIP-1"] and "third.json" in sections["RIP-1"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hotfolder_waiting_jobs{cause="full",destination="RIP-1"} 2.0' in metrics


def test_check_config_says_what_max_waiting_and_hours_do(tree):
    tree.write_config(routes=RIP + NIGHT.split("[[route]]\nname = \"Proof\"")[0])
    (tree.dest("RIP")).mkdir(parents=True)
    (tree.dest("RIP") / "waiting.pdf").write_text("x")
    notes = tree.run("check-config").stdout
    assert "route 'RIP-1': max_waiting = 3: its copies wait while its folder holds that many job files " \
           "(it holds 1 now)" in notes
    assert "route 'Press': copies go only in its hours 06:00-22:00 on mon,tue,wed,thu,fri,sat,sun " \
           "(Europe/London); outside them they wait" in notes
