"""Steering from the dashboard (docs/design.md#dashboard-actions): the actions of ``bin/pause``,
``bin/resume``, ``bin/hold``, ``bin/release``, ``bin/dismiss`` and ``bin/redeliver`` as forms.

Each is a POST guarded as requeue is (``act``: an operator, this site's Origin, the CSRF token)
and makes the very call its command makes (``steering.Steering``, ``redelivery``), so the audit
trail (steering_events, job_events) names the dashboard user. A refusal (a dismissal without a
reason, a release of a job not held) is ``steering.Refused``: its one line is the page, with
nothing changed (the core refuses before its transaction writes anything). Releasing or
dismissing many jobs shows first what would change: the same selection (``requeue.jobs_in``) and
the same call with ``dry_run``, as the commands' ``--dry-run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import flask
import peewee
from werkzeug.datastructures import MultiDict

from . import params
from .. import redelivery, steering
from ..config import Config
from ..requeue import jobs_in
from ..states import STEPS

PAUSED_ON = ("/", "/destinations", "/clients")      # the pages a pause form goes back to
REASON_MAX = 500                                    # characters of a reason: one line of the audit trail


def paused(db: peewee.Database, now: float) -> dict[tuple[str, str], steering.Pause]:
    """The pauses in force, by (kind, name): what the pages' forms offer to resume."""
    return {(p.kind, p.name): p for p in steering.Pauses.read(db, now).all}


@dataclass(frozen=True)
class BulkForm:
    """Which jobs a bulk release or dismissal chooses, as the commands' filters."""
    state: str              # failed or held
    client: str
    step: str
    since: float | None
    since_text: str
    reason: str
    confirmed: bool
    previewed: frozenset[int]   # with the confirmation: the jobs its preview showed

    def hidden(self) -> dict[str, str]:
        return {"state": self.state, "client": self.client, "step": self.step, "since": self.since_text,
                "reason": self.reason}


def reason(form: MultiDict) -> str:
    return params.text("reason", form.get("reason", ""), REASON_MAX).strip()


def bulk_form(form: MultiDict, states: tuple[str, ...]) -> BulkForm:
    since_text = form.get("since", "")
    return BulkForm(state=params.one_of("state", form.get("state", ""), states) or states[0],
                    client=params.text("client", form.get("client", "")).strip(),
                    step=params.one_of("step", form.get("step", ""), STEPS),
                    since=params.time("since", since_text), since_text=since_text,
                    reason=reason(form), confirmed=form.get("confirm") == "yes",
                    previewed=frozenset(params.whole_number("job", i) for i in form.getlist("job")))


def moved_line(action: str, job: steering.Chosen) -> str:
    """What an action does (or would do) to a job, as the commands print it."""
    to = {"hold": "held", "release": job.released_to, "dismiss": "dismissed"}[action]
    return f"{job.label}: {job.state} -> {to}"


def register(app: flask.Flask, config: Config, db: peewee.Database, clock: Callable[[], float],
             act: Callable[[], str], page: Callable[..., str]) -> None:
    """Add the steering forms' endpoints; ``act`` guards a request and returns the audit actor."""
    route_names = [route.name for route in config.routes]

    def steer() -> steering.Steering:
        return steering.Steering(db, act(), clock)

    def done(lines: list[str], back: str, title: str):
        return page("steered.html", lines=lines, problem=None, back=back, title=title)

    def refused(e: steering.Refused, back: str, title: str):
        status = 400 if e.code == steering.EX_USAGE else 409
        return page("steered.html", lines=[], problem=str(e), back=back, title=title), status

    def pause_target(form: MultiDict) -> tuple[str, str, str]:
        kind = params.one_of("kind", form.get("kind", ""), steering.KINDS)
        if not kind:
            raise params.BadParameter("kind", f"expected one of {', '.join(steering.KINDS)}")
        back = form.get("back", "/")
        return kind, params.text("name", form.get("name", "")), back if back in PAUSED_ON else "/"

    @app.post("/pause")
    def pause():
        doer = steer()
        kind, name, back = pause_target(flask.request.form)
        wanted = params.text("for", flask.request.form.get("for", "")).strip()
        why = reason(flask.request.form)
        try:
            until = doer.clock() + steering.for_seconds(wanted) if wanted else None
            made = doer.pause(kind, name, until=until, reason=why or None, route_names=route_names)
        except steering.Refused as e:
            return refused(e, back, "Pause")
        return done([f"paused {made.line()}"], back, "Paused")

    @app.post("/resume")
    def resume():
        doer = steer()
        kind, name, back = pause_target(flask.request.form)
        try:
            ended = doer.resume(kind, name, route_names=route_names)
        except steering.Refused as e:
            return refused(e, back, "Resume")
        return done([f"resumed {ended.line()}"], back, "Resumed")

    def one_job(action: str, job_id: int):
        doer = steer()
        why = reason(flask.request.form)
        back = f"/jobs/{job_id}"
        try:
            if action == "dismiss":
                moved = doer.dismiss([job_id], why)
            else:
                moved = getattr(doer, action)([job_id], why or None)       # hold or release
        except steering.Refused as e:
            return refused(e, back, action.capitalize())
        return done([moved_line(action, j) for j in moved], back, action.capitalize())

    for action in ("hold", "release", "dismiss"):
        app.add_url_rule(f"/jobs/<job:job_id>/{action}", f"steer_{action}",
                         lambda job_id, action=action: one_job(action, job_id), methods=["POST"])

    @app.post("/jobs/<job:job_id>/redeliver")
    def redeliver(job_id: int):
        doer = steer()
        only = flask.request.form.get("destination", "") or None
        notify = flask.request.form.get("notify") == "yes"
        back = f"/jobs/{job_id}"
        try:
            if only is not None and only not in route_names:
                raise steering.Refused(f"destination: no [[route]] is named {only!r}", steering.EX_USAGE)
            if notify and not config.api.endpoint:
                raise steering.Refused("notify: no api.endpoint is configured", steering.EX_USAGE)
            job, targets = redelivery.plan(db, config, job_id, only)
            redelivery.request(db, doer.actor, [job], only, notify, doer.clock())
        except steering.Refused as e:
            return refused(e, back, "Re-deliver")
        to = ", ".join(str(t.path) for t in targets) or "no destination"
        then = ", then notified again" if notify else ""
        return done([f"{job.label}: re-delivery requested to {to}{then}; the routers carry it out"], back, "Re-deliver")

    def bulk(action: str):
        doer = steer()
        states = ("held",) if action == "release" else ("failed", "held")
        form = bulk_form(flask.request.form, states)
        ids = [j.id for j in jobs_in((form.state,), client=form.client or None, step=form.step or None,
                                     since=form.since)]
        if form.confirmed:      # what the person saw: not a job that failed since, the filters alike
            ids = [i for i in ids if i in form.previewed]
        back = "/failed" if form.state == "failed" else "/jobs?state=held"
        try:
            if action == "release":
                chosen = doer.release(ids, form.reason or None, dry_run=not form.confirmed)
            else:
                chosen = doer.dismiss(ids, form.reason, dry_run=not form.confirmed)
        except steering.Refused as e:
            return refused(e, back, action.capitalize())
        return page("bulk.html", action=action, lines=[moved_line(action, j) for j in chosen],
                    ids=[j.id for j in chosen],
                    confirmed=form.confirmed, form=form, back=back, title=action.capitalize())

    app.add_url_rule("/release", "bulk_release", lambda: bulk("release"), methods=["POST"])
    app.add_url_rule("/dismiss", "bulk_dismiss", lambda: bulk("dismiss"), methods=["POST"])
