"""What the router would do with a file, touching nothing: ``bin/route --explain`` prints it and
the dashboard's job page shows it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import failures, ordering, rules, schemas
from .config import Config
from .hotfolder import eligible_name
from .validation import Invalid, parse, too_large, wanted


def explain(config: Config, path: Path) -> list[str]:
    """Lines describing the file's fate: validation, archive, destinations, clean-up."""
    path = Path(os.path.abspath(path))
    client = path.parent.name
    lines = [f"file:        {path}", f"client:      {client} (its folder)"]
    hot = config.paths.hot_folder
    if path.parent.parent != hot:
        lines.append(f"note:        not in a client folder of the hot folder {hot}; the scanner would not see it")
    suffix = config.detect.done_suffix
    if not eligible_name(path.name, suffix):
        lines.append("note:        the name is not one the pipeline picks up (it must end in .json and "
                     "not be hidden or temporary" + (f", nor a done marker ending in {suffix}" if suffix else "") + ")")
    elif suffix and not os.path.lexists(f"{path}{suffix}"):
        lines.append(f"note:        not taken until its done marker {path.name}{suffix} stands beside it "
                     "(detect.done_suffix)")
    if path.is_symlink():
        return lines + ["outcome:     ignored: symbolic links are never followed"]
    failed = failures.failed_path(config.paths.failed, client, path.name, time.time())
    try:
        size = path.stat().st_size
        if size > config.router.max_file_bytes:
            raise too_large(size, config.router.max_file_bytes)
        data = path.read_bytes()
        if schemas.may_apply(config.schemas, client):
            details = schemas.parse_whole(data, client)
        else:
            details = parse(data, client, wanted(rules.paths_named(config.routes)
                                                 + ordering.paths(config.router.order_by)))
    except Invalid as e:
        return lines + [f"outcome:     fails validation: {e}",
                        f"moved to:    {failed} (with {failed.name}.error.json beside it)"]
    except OSError as e:
        return lines + [f"outcome:     cannot be read: {e.strerror}"]
    lines += [f"ClientCode:  {details.client_code}", f"JobCategory: {details.job_category}"]
    if config.router.order_by:
        lines.append(f"order key:   {ordering.describe(details.document, config.router.order_by)}")
    broken = []
    for i, schema in enumerate(config.schemas, 1):
        head = f"schema {i}:".ljust(13) + f"{schema.shown}: "
        if (why := schema.failure(details)) is not None:
            lines.append(head + f"does not apply: {why}")
        elif errors := schemas.verdict(schema, details.document):
            broken.append(errors[0])
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            lines.append(head + f"fails: {errors[0]}{more}")
        else:
            lines.append(head + "passes")
    if broken:
        return lines + [f"outcome:     fails validation: {broken[0]}",
                        f"moved to:    {failed} (with {failed.name}.error.json beside it)"]
    lines.append(f"archive:     {config.paths.store / client / path.name}")
    facts = rules.Facts.of(details, client, path.name, time.time())   # detected now, were it dropped now
    verdicts = rules.evaluate(config.routes, facts)
    lines += [_verdict_line(i, v) for i, v in enumerate(verdicts, 1)]
    unsafe = next((v.unsafe for v in verdicts if v.unsafe), None)
    if unsafe:
        return lines + [f"outcome:     fails at route: {unsafe}",
                        "then:        removed from the hot folder; the archive copy is kept"]
    chosen = rules.destinations(config.routes, facts)
    holding = rules.holding(config.routes, facts)
    if holding is not None or (not chosen and config.router.unmatched == "hold"):
        why = f"[[route]] {holding.name!r} has hold = true" if holding else "no rule matches; router.unmatched = hold"
        return lines + [f"outcome:     held for a person ({why}): copied nowhere until bin/release",
                        "then:        stays in the hot folder while held"]
    if not chosen and config.router.unmatched == "fail":
        return lines + ["outcome:     fails at route (no rule matches; router.unmatched = fail)",
                        "then:        removed from the hot folder; the archive copy is kept"]
    for dest in chosen:
        lines.append(f"route:       {dest.name}: {dest.where}")
    if not chosen:
        lines.append("route:       none (no rule matches: archived only)")
    lines.append("then:        removed from the hot folder"
                 + ("; POSTed to " + config.api.endpoint if config.api.endpoint else ""))
    return lines


def _verdict_line(number: int, verdict: rules.Verdict) -> str:
    """One rule: matched and where its copy goes, or the first condition that failed."""
    head = f"rule {number}:".ljust(13) + f"{verdict.route.name}: "
    if verdict.failed:
        return head + f"no match: {verdict.failed}"
    if verdict.unsafe:
        return head + f"matches, but its destination cannot be built: {verdict.unsafe}"
    remote = verdict.route.remote
    return head + f"matches: {remote.label if remote else ''}{verdict.target}"
