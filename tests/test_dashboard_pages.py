"""The dashboard's round-3 pages (docs/design.md#dashboard-pages): /destinations, /clients, /waiting
by cause, a failed job's file; a real database filled by the real scanner and router.

Pages go through Flask's test client, which runs the same WSGI application waitress serves.
"""

from __future__ import annotations

import re
import time

import pytest

from pipeline import waits
from pipeline.web import app as web_app
from pipeline.web import destinations
from test_dashboard import BAD_NAME, HOSTILE_NAME, filled, route_everything  # noqa: F401 - a fixture

HOSTILE_CLIENT = "<b onmouseover=x()>AC&ME"
HOSTILE_CONTENT = '{"JobSpecification": "<script>alert(1)</script>"}'          # valid JSON, not a job: it fails


def client_for(tree, db, later: float = 0):
    return web_app.create_app(tree.config, db, environ={}, clock=lambda: time.time() + later).test_client()


def text(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.get_data(as_text=True).replace("<wbr>", "")     # the break opportunities in long names


def row_of(page: str, name: str) -> str:
    """The table row that names ``name``, tags and all."""
    [row] = [r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if f">{name}<" in r]
    return row


def test_a_destination_whose_folder_is_gone_shows_waiting_on_its_place_with_its_jobs(tree, db):
    tree.write_config(router="create_folders = false")
    (tree.root / "dest" / "CLIENT-STORES" / "LOREAL" / "IN").mkdir(parents=True)
    tree.drop("RANK", "waits-1.json")
    tree.drop("RANK", "waits-2.json")
    tree.drop("LOREAL", "goes.json")
    route_everything(tree, db)
    page = text(client_for(tree, db), "/destinations")
    rank = row_of(page, "Monday Rank")
    assert "waiting on its place" in rank and re.search(r'class="count-bad">2<', rank)
    assert "oldest" in rank and "Monday Rank: " in rank                        # the router's reason
    loreal = row_of(page, "LOREAL/IN")
    assert ">ok<" in loreal and "1 deliveries in the last 24 h" in loreal
    assert re.search(r'<span class="">0</span>', loreal)                           # nothing waits: not red
    assert page.count(">Celtra<") == 1                                             # two rules, one name


def test_waiting_groups_jobs_by_cause_and_destination(tree, db):
    tree.write_config(router="create_folders = false")
    tree.drop("RANK", "waits-1.json")
    tree.drop("LOREAL", "waits-2.json")
    route_everything(tree, db)
    page = text(client_for(tree, db), "/waiting")
    sections = dict(re.findall(r'<section id="destination-([^"]+)">(.*?)</section>', page, re.S))
    assert set(sections) == {"Monday Rank", "LOREAL/IN"}
    assert "waits-1.json" in sections["Monday Rank"] and "waits-2.json" not in sections["Monday Rank"]
    assert "waits-2.json" in sections["LOREAL/IN"]


def test_causes_follow_the_state_and_the_routes_the_error_names():
    names = ["A", "B: x", "C"]
    assert waits.causes_of("archived", "A: gone (/d/a); C: full (/d/c)", names) == [("destination", "A"),
                                                                                  ("destination", "C")]
    assert waits.causes_of("archived", "B: x: denied (/d/b)", names) == [("place", "")]   # only whole names
    assert waits.causes_of("archived", "cannot sync the archive folder: EIO", names) == [("place", "")]
    assert waits.causes_of("detected", "A: anything", names) == [("archive", "")]
    assert waits.causes_of("routed", None, names) == [("api", "")]


def test_a_destination_state_is_the_first_rule_that_holds_so_later_causes_plug_in(monkeypatch):
    d = waits.Destination("A", {"destination": waits.Waiting("destination", "A", 3)})
    assert waits.destination_state(d) == "waiting on its place"
    assert waits.destination_state(waits.Destination("A")) == "ok"
    monkeypatch.setattr(waits, "DESTINATION_STATES", [lambda d: "paused"] + waits.DESTINATION_STATES)
    assert waits.destination_state(d) == "paused"


def test_clients_show_the_day_the_jobs_no_rule_routed_and_silences(tree, db, filled):  # noqa: F811
    tree.write_config(extra='[[expect]]\nclients = ["QUIET"]\nwithin = 60\n')
    tree.drop("NOBODY", "unrouted.json")                           # no rule names NOBODY: archived only
    route_everything(tree, db)
    page = text(client_for(tree, db, later=120), "/clients")          # QUIET: 60 s gone without a file
    rank = row_of(page, "RANK")
    assert re.findall(r'<td class="num"[^>]*>(?:<span class="[^"]*">)?(\d+)', rank)[:5] == ["0", "0", "2", "0", "0"]
    assert re.search(r'class="count-warn">1<', row_of(page, "NOBODY"))
    loreal = row_of(page, "LOREAL")
    assert re.search(r'class="count-bad">1<', loreal)                  # its failed job: red, not zero
    assert "QUIET" in page and "expected within" in page


def test_a_failed_jobs_page_shows_its_file_from_failed_escaped_and_capped(tree, db, filled):  # noqa: F811
    client = client_for(tree, db)
    job_id = filled[BAD_NAME]
    failed_path = db.run_sql("SELECT failed_path, archive_path FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert failed_path[0] and failed_path[1] is None          # it never reached the archive
    page = text(client, f"/jobs/{job_id}")
    assert '<pre class="json content">{not json</pre>' in page
    download = client.get(f"/jobs/{job_id}/archived")
    assert download.status_code == 200 and download.data == b"{not json"
    big = tree.failed / "LOREAL" / "big.json"
    big.write_bytes(b"[" + b"1," * 300_000 + b"1]")
    db.run_sql("UPDATE jobs SET failed_path = ? WHERE id = ?", (str(big), job_id))
    page = text(client, f"/jobs/{job_id}")
    assert "the first 256.0" not in page and "the first 262,144 bytes shown" in page


def test_hostile_client_names_and_content_stay_escaped_on_every_new_page(tree, db):
    tree.write_config(router="create_folders = false")
    tree.drop(HOSTILE_CLIENT, HOSTILE_NAME, HOSTILE_CONTENT)
    tree.drop("RANK", HOSTILE_NAME)                                          # waits: no folder
    route_everything(tree, db)
    client = client_for(tree, db)
    failed = db.run_sql("SELECT id FROM jobs WHERE state = 'failed'").fetchone()[0]
    for url in ("/destinations", "/clients", "/waiting", f"/jobs/{failed}", "/"):
        page = text(client, url)
        for raw in ("<b onmouseover", "<img src=x", "<script>alert"):
            assert raw not in page, (url, raw)
    assert "&lt;b onmouseover=x()&gt;AC&amp;ME" in text(client, "/clients")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text(client, f"/jobs/{failed}")


def test_a_routes_last_delivery_is_read_through_its_index(tree, db):
    if tree.engine != "sqlite":
        pytest.skip("the plan of SQLite; PostgreSQL picks by its statistics")
    plan = " ".join(str(r) for r in db.run_sql("EXPLAIN QUERY PLAN " + destinations._SQL_LAST, ("Dest",)).fetchall())
    assert "deliveries_name" in plan and "SCAN" not in plan.replace("SCAN deliveries USING COVERING INDEX", "")
