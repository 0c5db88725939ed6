"""Routing rules beyond client and category (docs/design.md#validation-and-routing): match, files, templates in to and rename."""

import datetime as dt
import json
import os
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import MATRIX, job_document, states
from pipeline import config as config_module
from pipeline import rules, validation
from pipeline.jobs import Jobs
from pipeline.store.models import Delivery, Job
from pipeline.requeue import Requeue, failed_jobs
from pipeline.router import Router
from pipeline.scanner import Scanner

DAY = dt.datetime(2026, 5, 31, 23, 30, tzinfo=dt.timezone.utc).timestamp()   # 1 June in London


def compile_rules(base: Path, *tables: dict, timezone: str = "Europe/London") -> tuple[rules.Route, ...]:
    for table in tables:
        table.setdefault("name", "R")
    return config_module.parse({"route": list(tables), "report": {"timezone": timezone}}, base=base).routes


def facts_of(routes, document: dict, name: str = "a.json", client: str | None = None,
             detected_at: float = DAY) -> rules.Facts:
    """The facts the router would build: the file validated keeping what the rules name."""
    client = client or document["JobSpecification"]["JobDetails"]["ClientCode"]
    keep = validation.wanted(rules.paths_named(routes))
    details = validation.parse(json.dumps(document).encode(), client, keep)
    return rules.Facts.of(details, client, name, detected_at)


def targets(routes, document: dict, **kw) -> list[Path]:
    return [d.path for d in rules.destinations(routes, facts_of(routes, document, **kw))]


def doc(client="RANK", category="PRODUCTION", items=None, **details) -> dict:
    document = job_document(client, category, **details)
    if items is not None:
        document["JobSpecification"]["Items"] = items
    return document


# --- each key alone ------------------------------------------------------------------------------

def test_match_alone_on_a_dotted_path_compared_case_insensitively(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d", "match": {"JobSpecification.JobDetails.StudioCode": ["LDN", "nyc"]}})
    assert targets(routes, doc(StudioCode="ldn")) == [tmp_path / "d" / "a.json"]
    assert targets(routes, doc(StudioCode="NYC")) == [tmp_path / "d" / "a.json"]
    assert targets(routes, doc(StudioCode="PAR")) == []


def test_match_written_as_bare_dotted_toml_keys_is_the_same_rule(tree):
    tree.write_config(routes='[[route]]\nname = "R"\nto = "d"\n'
                             'match = { JobSpecification.JobDetails.StudioCode = ["LDN"] }\n')
    (route,) = tree.config.routes
    assert [c.path for c in route.match] == ["JobSpecification.JobDetails.StudioCode"]


def test_a_missing_path_does_not_match_and_list_items_are_named_by_index(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d", "match": {"JobSpecification.Items.1.Code": ["B2"]}})
    assert targets(routes, doc(items=[{"Code": "A1"}, {"Code": "b2"}])) != []
    assert targets(routes, doc(items=[{"Code": "B2"}])) == []                  # no item 1
    assert targets(routes, doc()) == []                                       # no Items at all
    assert targets(routes, doc(items={"1": {"Code": "B2"}})) != []            # an object's key "1" too
    assert targets(routes, doc(items=[{"Code": "A"}, "B2"])) == []            # item 1 has no Code


@pytest.mark.parametrize("value, allowed, matches", [
    (5, [5], True), (5, ["5"], True), (5.5, ["5.5"], True), (5, [6], False),
    (True, [True], True), (True, ["TRUE"], True), (False, [True], False),
    (None, ["null"], True), (None, ["x"], False),
    ({"a": 1}, ["x"], False), ([1], ["1"], False),          # an object or an array is not a value
])
def test_non_string_values_are_compared_as_their_json_text(tmp_path, value, allowed, matches):
    routes = compile_rules(tmp_path, {"to": "d", "match": {"JobSpecification.JobDetails.Priority": allowed}})
    assert bool(targets(routes, doc(Priority=value))) == matches


def test_files_alone_are_globs_on_the_file_name_ignoring_case(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d", "files": ["*_proof.json", "rush-??.json"]})
    assert targets(routes, doc(), name="5903771_PROOF.json") != []
    assert targets(routes, doc(), name="rush-01.JSON") != []
    assert targets(routes, doc(), name="rush-001.json") == []
    assert targets(routes, doc(), name="5903771.json") == []


def test_to_alone_builds_the_folder_from_the_job(tmp_path):
    routes = compile_rules(tmp_path, {"to": "P/{ClientCode}/{JobCategory}/{StudioCode}/{client}/{stem}/"
                                            "{field:JobSpecification.Items.0.Size}/{date:%Y-%m-%d}"})
    got = targets(routes, doc(category="Social", items=[{"Size": 300}]), name="59.json")
    assert got == [tmp_path / "P/RANK/Social/RANK_STUDIO/RANK/59/300/2026-06-01/59.json"]


def test_the_date_is_the_day_the_job_was_detected_in_report_timezone(tmp_path):
    london = compile_rules(tmp_path, {"to": "d/{date:%Y-%m-%d}"})
    utc = compile_rules(tmp_path, {"to": "d/{date:%Y-%m-%d}"}, timezone="UTC")
    assert targets(london, doc()) == [tmp_path / "d/2026-06-01/a.json"]
    assert targets(utc, doc()) == [tmp_path / "d/2026-05-31/a.json"]


def test_rename_alone_names_the_copy(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d", "rename": "{ClientCode}_{stem}_{{v}}.json"})
    assert targets(routes, doc(), name="59.json") == [tmp_path / "d" / "RANK_59_{v}.json"]


def test_every_key_combined_with_and(tmp_path):
    routes = compile_rules(tmp_path, {
        "clients": ["rank"], "categories": ["production"], "files": ["*_proof.json"],
        "match": {"JobSpecification.JobDetails.StudioCode": ["LDN", "NYC"]},
        "to": "PROOFS/{ClientCode}/{StudioCode}/{date:%Y-%m}", "rename": "{ClientCode}_{name}"})
    good = doc(StudioCode="LDN")
    assert targets(routes, good, name="1_proof.json") == [tmp_path / "PROOFS/RANK/LDN/2026-06/RANK_1_proof.json"]
    for document, name in [(good, "1.json"), (doc(StudioCode="PAR"), "1_proof.json"),
                           (doc(category="CELTRA", StudioCode="LDN"), "1_proof.json"),
                           (doc("BISSELL", StudioCode="LDN"), "1_proof.json")]:
        assert targets(routes, document, name=name) == []


def test_the_seeds_matrix_compiles_to_static_rules_as_before(tree):
    tree.write_config(routes=MATRIX)
    assert all(r.template is None and r.rename is None and not r.match and r.files is None
               for r in tree.config.routes)
    facts = rules.Facts.plain("RANK", "celtra")
    assert [d.name for d in rules.destinations(tree.config.routes, facts)] == ["Monday Rank", "Celtra"]


def test_validation_keeps_only_the_paths_the_rules_name(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d/{field:JobSpecification.Items.2.Code}",
                                      "match": {"Top.Flag": [True]}})
    document = doc(items=[{"Code": "a", "Big": "x" * 100}, {"Code": "b"}, {"Code": "c", "Notes": "y"}])
    document["Top"] = {"Flag": True, "Other": [1, 2, 3]}
    kept = facts_of(routes, document).document
    assert kept["JobSpecification"]["Items"] == [None, None, {"Code": "c"}]
    assert kept["Top"] == {"Flag": True}
    assert set(kept["JobSpecification"]["JobDetails"]) == {"ClientCode", "JobCategory", "StudioCode", "Title"}


# --- placeholders that cannot be filled ------------------------------------------------------------

@pytest.mark.parametrize("value, shown", [
    ("..", "'..'"), (".", "'.'"), ("a/b", "'a/b'"), ("../../etc", "'../../etc'"), ("a\0b", "'a\\x00b'"),
    ("", "''"), ("a b", "'a b'"), ("x" * 300, "'" + "x" * 80 + "'..., longer than a file or folder name may be (255 bytes)"),
])
def test_a_hostile_value_fails_naming_the_placeholder_and_the_value(tmp_path, value, shown):
    routes = compile_rules(tmp_path, {"name": "Studio", "to": "d/{field:JobSpecification.JobDetails.Code}"})
    with pytest.raises(rules.Unsafe) as e:
        targets(routes, doc(Code=value))
    assert str(e.value).startswith(f"[[route]] 'Studio' to: {{field:JobSpecification.JobDetails.Code}} is {shown}")


@pytest.mark.parametrize("value, reason", [
    (None, "is null, not a value that can name a folder"),
    ({"a": 1}, "is an object, not a value"), ([1], "is an array, not a value"),
    ("missing", "is missing in this job"),
])
def test_a_null_a_container_or_a_missing_path_fails_the_placeholder(tmp_path, value, reason):
    routes = compile_rules(tmp_path, {"to": "d", "rename": "{field:JobSpecification.JobDetails.Code}.json"})
    document = doc() if value == "missing" else doc(Code=value)
    with pytest.raises(rules.Unsafe, match=f"rename: {{field:JobSpecification.JobDetails.Code}} {reason}"):
        targets(routes, document)


def test_numbers_and_booleans_fill_a_placeholder_as_their_text(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d/{field:JobSpecification.JobDetails.N}/{field:JobSpecification.JobDetails.B}"})
    assert targets(routes, doc(N=42, B=False)) == [tmp_path / "d/42/false/a.json"]


def test_a_missing_studio_code_fails_a_rule_that_names_it(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d/{StudioCode}"})
    document = doc()
    del document["JobSpecification"]["JobDetails"]["StudioCode"]
    with pytest.raises(rules.Unsafe, match=r"\{StudioCode\} is missing in this job"):
        targets(routes, document)


def test_a_file_name_with_spaces_is_fine_in_name_and_stem(tmp_path):
    routes = compile_rules(tmp_path, {"to": "d/{stem}", "rename": "{ClientCode}_{name}"})
    assert targets(routes, doc(), name="Proof 1 %.json") == [tmp_path / "d/Proof 1 %/RANK_Proof 1 %.json"]


def test_a_rule_that_does_not_match_is_not_expanded(tmp_path):
    routes = compile_rules(tmp_path, {"clients": ["LOREAL"], "to": "d/{field:No.Such.Path}"})
    assert targets(routes, doc()) == []


# --- names a Windows share cannot hold -------------------------------------------------------------

SHARE = "a name Windows shares cannot hold"


@pytest.mark.parametrize("value, reason", [
    ("CON", f"{SHARE} (CON is a device name)"), ("nul", f"{SHARE} (NUL is a device name)"),
    ("Com1", f"{SHARE} (COM1 is a device name)"), ("LPT9", f"{SHARE} (LPT9 is a device name)"),
    ("aux", f"{SHARE} (AUX is a device name)"), ("PRN", f"{SHARE} (PRN is a device name)"),
    ("con.json", f"{SHARE} (CON is a device name)"), ("Com1.txt", f"{SHARE} (COM1 is a device name)"),
    ("LDN.", f"{SHARE} (it ends with a dot)"),
    (".LDN", "a hidden name (it starts with a dot) that the next hot folder would ignore"),
])
def test_a_value_giving_a_folder_a_share_cannot_hold_fails_naming_the_rule_and_the_name(tmp_path, value, reason):
    routes = compile_rules(tmp_path, {"name": "Proofs", "to": "d/{field:JobSpecification.JobDetails.Code}"})
    with pytest.raises(rules.Unsafe) as e:
        targets(routes, doc(Code=value))
    assert str(e.value) == f"[[route]] 'Proofs' to: {{field:JobSpecification.JobDetails.Code}} gives {value!r}, {reason}"


@pytest.mark.parametrize("name, rename, gives, reason", [
    ("CON.json", "{stem}.json", "CON.json", f"{SHARE} (CON is a device name)"),
    ("nul.json", "{name}", "nul.json", f"{SHARE} (NUL is a device name)"),
    ("a.json", "{field:JobSpecification.JobDetails.Code}.txt", "Com1.txt", f"{SHARE} (COM1 is a device name)"),
    ("a.json", "{stem}_{field:JobSpecification.JobDetails.Trail}", "a_x.", f"{SHARE} (it ends with a dot)"),
    ("a .json", "{stem}", "a ", f"{SHARE} (it ends with a space)"),
    ("a.json", "{field:JobSpecification.JobDetails.Dot}_{name}", ".x_a.json",
     "a hidden name (it starts with a dot) that the next hot folder would ignore"),
])
def test_a_rename_giving_a_name_a_share_cannot_hold_fails_naming_the_rule(tmp_path, name, rename, gives, reason):
    routes = compile_rules(tmp_path, {"name": "Proofs", "to": "d", "rename": rename})
    with pytest.raises(rules.Unsafe) as e:
        targets(routes, doc(Code="Com1", Dot=".x", Trail="x."), name=name)
    assert str(e.value) == f"[[route]] 'Proofs' rename: {rename} gives {gives!r}, {reason}"


@pytest.mark.parametrize("name, device", [("con.json", "CON"), ("Com1.json", "COM1"), ("LPT9.JSON", "LPT9"),
                                          ("aux.v2.json", "AUX"), ("PRN .json", "PRN"), ("COM¹.json", "COM¹")])
def test_a_file_whose_own_name_a_share_cannot_hold_fails_a_rule_that_copies_it(tmp_path, name, device):
    routes = compile_rules(tmp_path, {"name": "Proofs", "to": "d"})
    with pytest.raises(rules.Unsafe) as e:
        targets(routes, doc(), name=name)
    assert str(e.value) == f"[[route]] 'Proofs': the file name {name!r} is {SHARE} ({device} is a device name)"
    # A rename that gives another name copies it; no rule: archived only (the archive is local).
    assert targets(compile_rules(tmp_path, {"to": "d", "rename": "job_{name}"}), doc(), name=name) == \
        [tmp_path / "d" / f"job_{name}"]
    assert targets(compile_rules(tmp_path, {"clients": ["LOREAL"], "to": "d"}), doc(), name=name) == []


@pytest.mark.parametrize("value", ["CONSOLE", "COM10", "LPT", "con_x", "x.con", "a.b", "NULL", "Proof 1", "x-"])
def test_names_that_only_look_like_device_names_are_fine(tmp_path, value):
    routes = compile_rules(tmp_path, {"to": "d/{stem}"})
    assert targets(routes, doc(), name=f"{value}.json") == [tmp_path / "d" / value / f"{value}.json"]


@pytest.mark.parametrize("lines, message", [
    ('rename = "CON.json"', "[[route]] #1 rename: 'CON.json' is a name Windows shares cannot hold (CON is a device name)"),
    ('rename = "proof."', "[[route]] #1 rename: 'proof.' is a name Windows shares cannot hold (it ends with a dot)"),
    ('rename = ".{name}"', "[[route]] #1 rename: '.{name}' always gives a hidden name (it starts with a dot) "
                           "that the next hot folder would ignore"),
    ('rename = "{stem}.json "', "[[route]] #1 rename: '{stem}.json ' always gives a name Windows shares cannot hold "
                                "(it ends with a space)"),
    ('to = "d/{ClientCode}/aux"', "[[route]] #1 to: 'aux' is a name Windows shares cannot hold (AUX is a device name)"),
])
def test_a_rule_whose_own_text_gives_a_name_a_share_cannot_hold_is_refused_at_start(tree, lines, message):
    to = "" if lines.startswith("to =") else 'to = "d"\n'
    path = tree.root / "bad.toml"
    path.write_text(f'[paths]\nhot_folder = "hot"\n\n[[route]]\nname = "R"\n{to}{lines}\n')
    with pytest.raises(config_module.ConfigError) as e:
        config_module.load(path)
    assert message in str(e.value)


# --- no value lands a copy outside its rule's base folder ----------------------------------------

values = st.one_of(st.text(), st.sampled_from(["..", ".", "/", "a/../..", "\0", "", "~", "-", ".a", "a..", "//x"]),
                   st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(studio=st.text(min_size=1), field=values, category=st.text(min_size=1).filter(str.strip))
def test_no_value_ever_makes_a_copy_land_outside_its_base_folder(tmp_path, studio, field, category):
    routes = compile_rules(tmp_path, {
        "to": "/base/x/{StudioCode}/{JobCategory}.{field:JobSpecification.JobDetails.F}/{date:%Y}",
        "rename": "{field:JobSpecification.JobDetails.F}{JobCategory}_{name}"})
    document = doc(category=category, StudioCode=studio, F=field)
    try:
        facts = facts_of(routes, document)
    except validation.Invalid:
        return
    try:
        (dest,) = rules.destinations(routes, facts)
    except rules.Unsafe:
        return
    path = dest.path
    assert os.path.normpath(path) == str(path)                  # nothing like .. or // in it
    assert path.parent.parent.parent.parent == Path("/base/x")  # exactly the template's levels
    assert path.parts[:3] == ("/", "base", "x")
    assert "\0" not in str(path) and all(len(os.fsencode(p)) <= 255 for p in path.parts)


# --- config errors at start ------------------------------------------------------------------------

@pytest.mark.parametrize("lines, message", [
    ('to = "d/{NoSuchThing}"', "[[route]] #1 to: {NoSuchThing} names nothing known"),
    ('to = "d/{clientcode}"', "[[route]] #1 to: {clientcode} names nothing known"),
    ('to = "d/{date:%Y/%m}"', "[[route]] #1 to: {date:%Y/%m}: '/' cannot be in a folder name"),
    ('to = "d/{date:%Y %m}"', "[[route]] #1 to: {date:%Y %m}: ' ' cannot be in a folder name"),
    ('to = "d/{date:%z}"', "[[route]] #1 to: {date:%z}: %z is not a date directive"),
    ('to = "d/{date}"', "[[route]] #1 to: {date} needs a format"),
    ('to = "d/{field:}"', "[[route]] #1 to: '' is not a dotted path"),
    ('to = "d/{field:a..b}"', "[[route]] #1 to: 'a..b' is not a dotted path"),
    ('to = "d/{ClientCode!r}"', "[[route]] #1 to: '{ClientCode!r}': !r is not supported"),
    ('to = "d/{ClientCode:>9}"', "{ClientCode} takes no format"),
    ('to = "d/{x"', "[[route]] #1 to: '{x': expected '}'"),
    ('to = "d/{ClientCode}/../e"', "'..' after a placeholder would leave the rule's base folder"),
    ('to = "d"\nrename = "a/{name}"', "[[route]] #1 rename: 'a/{name}': a file name, so it cannot hold '/'"),
    ('to = "d"\nrename = "{Nothing}"', "[[route]] #1 rename: {Nothing} names nothing known"),
    ('to = "d"\nrename = ""', "[[route]] #1 rename: expected a non-empty string"),
    ('to = "d"\nfiles = ["a/*.json"]', "[[route]] #1 files: 'a/*.json': a glob matches the file name only"),
    ('to = "d"\nfiles = ["[ab.json"]', "[[route]] #1 files: '[ab.json': '[' opens a set of characters"),
    ('to = "d"\nfiles = []', "[[route]] #1 files: an empty list matches nothing"),
    ('to = "d"\nfiles = "*.json"', "[[route]] #1 files: expected a list"),
    ('to = "d"\nmatch = { "a.b" = "x" }', "[[route]] #1 match a.b: expected a non-empty list"),
    ('to = "d"\nmatch = { "a.b" = [] }', "[[route]] #1 match a.b: expected a non-empty list"),
    ('to = "d"\nmatch = { "a.b" = [[1]] }', "[[route]] #1 match a.b: expected strings, numbers or booleans"),
    ('to = "d"\nmatch = { "a..b" = ["x"] }', "[[route]] #1 match a..b: 'a..b' is not a dotted path"),
    ('to = "d"\nmatch = []', "[[route]] #1 match: expected a table"),
    ('to = "{ClientCode}/in"', "a job could fill it to a folder in the hot folder"),
])
def test_a_bad_rule_is_a_config_error_at_start_naming_the_key(tree, lines, message):
    path = tree.root / "bad.toml"
    path.write_text(f'[paths]\nhot_folder = "hot"\n\n[[route]]\nname = "R"\n{lines}\n')
    with pytest.raises(config_module.ConfigError) as e:
        config_module.load(path)
    assert message in str(e.value)


def test_the_router_exits_78_on_an_unknown_placeholder(tree):
    tree.config_path.write_text('[[route]]\nname = "R"\nto = "d/{NoSuchThing}"\n')
    proc = tree.run("router", "--once", check=False)
    assert proc.returncode == 78 and "to: {NoSuchThing} names nothing known" in proc.stderr


def test_a_template_base_that_could_reach_the_hot_folder_is_refused_but_a_distinct_one_is_not(tree):
    with pytest.raises(config_module.ConfigError, match="could fill it to a folder in the hot folder"):
        tree.write_config(routes='[[route]]\nname = "R"\nto = "{field:A}/x"\n')     # "hot" would do
    tree.write_config(routes='[[route]]\nname = "R"\nto = "OUT-{field:A}/x"\n')    # cannot be "hot"
    assert tree.config.routes[0].to == tree.root


# --- with the router -----------------------------------------------------------------------------

TEMPLATED = '''
[[route]]
name = "Proofs"
clients = ["RANK"]
files = ["*_proof.json"]
match = { "JobSpecification.JobDetails.StudioCode" = ["LDN", "NYC"] }
to = "dest/PROOFS/{ClientCode}/{StudioCode}/{date:%Y-%m}"
rename = "{ClientCode}_{name}"

[[route]]
name = "By code"
to = "dest/CODES/{field:JobSpecification.Items.0.Code}"
match = { "JobSpecification.Items.0.Code" = ["A1", "B2", "..", "x/y", "ok"] }
'''


def route_all(tree, db) -> Jobs:
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    return jobs


def month(job: Job) -> str:
    """The month the job was detected in report.timezone (the default, Europe/London)."""
    return dt.datetime.fromtimestamp(job.detected_at, zoneinfo.ZoneInfo("Europe/London")).strftime("%Y-%m")


def test_a_templated_route_copies_to_the_expanded_path_and_records_it(tree, db):
    tree.write_config(routes=TEMPLATED)
    tree.drop("RANK", "7_proof.json", doc(StudioCode="ldn", items=[{"Code": "A1"}]))
    route_all(tree, db)
    (job,) = Job.select()
    proof = tree.dest(f"PROOFS/RANK/ldn/{month(job)}/RANK_7_proof.json")
    code = tree.dest("CODES/A1/7_proof.json")
    assert proof.read_bytes() == code.read_bytes() == (tree.store / "RANK/7_proof.json").read_bytes()
    assert job.state == "routed"
    assert sorted((d.name, d.path) for d in Delivery.select()) == [("By code", str(code)), ("Proofs", str(proof))]
    assert tree.files(tree.dest("")) == sorted([str(proof.relative_to(tree.dest(""))),
                                               str(code.relative_to(tree.dest("")))])   # no temporaries


@pytest.mark.parametrize("code, shown", [("..", "'..'"), ("x/y", "'x/y'")])
def test_a_hostile_value_fails_the_job_at_route_and_keeps_the_archive_copy(tree, db, code, shown):
    tree.write_config(routes=TEMPLATED)
    body = json.dumps(doc(items=[{"Code": code}]))
    tree.drop("RANK", "bad.json", body)
    tree.drop("RANK", "good.json", doc(items=[{"Code": "B2"}]))
    route_all(tree, db)
    bad = Job.get(Job.file_name == "bad.json")
    assert (bad.state, bad.failed_step) == ("failed", "route")
    assert bad.last_error == (f"[[route]] 'By code' to: {{field:JobSpecification.Items.0.Code}} is {shown}, "
                              "not a safe folder name (only letters, digits, _, - and . are allowed)")
    assert (tree.store / "RANK/bad.json").read_text() == body
    assert not (tree.hot / "RANK/bad.json").exists()
    assert tree.files(tree.dest("")) == ["CODES/B2/good.json"]          # nothing of bad.json anywhere
    assert Job.get(Job.file_name == "good.json").state == "routed"


def test_two_rules_expanding_to_one_folder_copy_there_once(tree, db):
    tree.write_config(routes='''
[[route]]
name = "By studio"
to = "dest/S/{StudioCode}"
[[route]]
name = "By field"
to = "dest/S/{field:JobSpecification.JobDetails.Alias}"
''')
    tree.drop("RANK", "1.json", doc(StudioCode="LDN", Alias="LDN"))
    tree.drop("RANK", "2.json", doc(StudioCode="LDN", Alias="NYC"))
    route_all(tree, db)
    assert tree.files(tree.dest("S")) == ["LDN/1.json", "LDN/2.json", "NYC/2.json"]
    one = Job.get(Job.file_name == "1.json")
    assert [(d.name, d.path) for d in Delivery.select().where(Delivery.job == one)] == \
        [("By studio", str(tree.dest("S/LDN/1.json")))]


def test_a_symlink_below_the_base_is_not_followed(tree, db):
    tree.write_config(routes='[[route]]\nname = "S"\nto = "dest/S/{StudioCode}"\n')
    outside = tree.root / "outside"
    outside.mkdir()
    tree.dest("S").mkdir(parents=True)
    os.symlink(outside, tree.dest("S/LDN"))
    tree.drop("RANK", "1.json", doc(StudioCode="LDN"))
    route_all(tree, db)
    (job,) = Job.select()
    assert (job.state, job.failed_step) == ("failed", "route")
    assert job.last_error == f"S: {tree.dest('S/LDN')} is a symbolic link (not followed)"
    assert list(outside.iterdir()) == [] and (tree.store / "RANK/1.json").exists()


def test_a_job_whose_template_failed_is_requeued_and_routed_once_the_rule_is_fixed(tree, db):
    tree.write_config(routes='[[route]]\nname = "S"\nto = "dest/S/{field:JobSpecification.JobDetails.Desk}"\n')
    tree.drop("RANK", "1.json", doc(Desk="../up"))
    route_all(tree, db)
    assert states(db) == {"failed": 1}
    (job,) = failed_jobs()
    assert job.failed_step == "route"

    again = tree.run("requeue", "--failed").stdout            # unchanged rule: fails the same way again
    assert "back to archived" in again
    tree.run("router", "--once")
    job = Job.get()
    assert (job.state, job.failed_step) == ("failed", "route") and "is '../up'" in job.last_error

    tree.write_config(routes='[[route]]\nname = "S"\nto = "dest/S/{StudioCode}"\n')
    tree.run("requeue", "--failed")
    tree.run("router", "--once")
    assert Job.get().state == "routed"
    assert tree.files(tree.dest("S")) == ["RANK_STUDIO/1.json"]
    assert [d.path for d in Delivery.select()] == [str(tree.dest("S/RANK_STUDIO/1.json"))]


def test_explain_shows_each_rule_its_first_failed_condition_and_the_expanded_path(tree):
    tree.write_config(routes=MATRIX + TEMPLATED)
    path = tree.drop("RANK", "7_proof.json", doc(StudioCode="PAR", items=[{"Code": "ok"}]))
    out = tree.run("route", "--explain", str(path)).stdout
    assert f"rule 1:      Monday Rank: matches: {tree.dest('Monday Rank/7_proof.json')}" in out
    assert "rule 2:      Monday RB: no match: clients: RANK is not one of RECKITTBENCKISER" in out
    assert "rule 6:      Celtra: no match: categories: PRODUCTION is not one of CELTRA" in out
    assert "rule 7:      Proofs: no match: match JobSpecification.JobDetails.StudioCode: 'PAR' is not one of LDN, NYC" in out
    assert f"rule 8:      By code: matches: {tree.dest('CODES/ok/7_proof.json')}" in out
    assert f"route:       By code: {tree.dest('CODES/ok/7_proof.json')}" in out

    path = tree.drop("RANK", "8.json", doc(StudioCode="LDN", items=[{"Code": ".."}]))
    out = tree.run("route", "--explain", str(path)).stdout
    assert "rule 7:      Proofs: no match: files: 8.json matches none of *_proof.json" in out
    assert ("rule 8:      By code: matches, but its destination cannot be built: [[route]] 'By code' to: "
            "{field:JobSpecification.Items.0.Code} is '..'") in out
    assert "outcome:     fails at route: [[route]] 'By code' to:" in out
    assert not tree.dest("").exists() and not tree.store.exists()
