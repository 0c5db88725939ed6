"""The job table's vocabulary: states, steps and queues. A leaf: it imports nothing.

Life of a job (docs/design.md#the-job-lifecycle)::

    detected -> archived -> routed -> notified
        \\___________\\__________\\_________\\___> failed  (failed_step says where)

A person steers (docs/design.md#steering): detected or archived -> held (an approval step, or
bin/hold) -> back where it stopped (bin/release); held or failed -> dismissed (bin/dismiss, final).
"""

STATES = ("detected", "archived", "routed", "notified", "failed", "held", "dismissed")
# The steps a job can fail at, in the order it meets them.
STEPS = ("detect", "validate", "archive", "route", "notify")

# The states in which a job waits for a program, each with the column that says since when.
WAITING_SINCE = {"detected": "detected_at", "archived": "archived_at", "routed": "routed_at"}

# The two queues, as the text of the partial indexes jobs_route_queue and jobs_notify_queue: a
# query must spell its state clause exactly so for the planner to use them.
ROUTE_QUEUE = "state IN ('detected', 'archived')"
NOTIFY_QUEUE = "state = 'routed'"
QUEUE_OF_STATE = {"detected": ROUTE_QUEUE, "archived": ROUTE_QUEUE, "routed": NOTIFY_QUEUE}
# A job waits for a router from detection, and for the notifier from routing: each wait's queue and
# the column saying since when (the stuck-job alerts and bin/status read them).
WAITS = {"route": (ROUTE_QUEUE, "detected_at"), "notify": (NOTIFY_QUEUE, "routed_at")}

STEP_OF_STATE = {"detected": "validate", "archived": "route", "routed": "notify"}

# Where ``bin/requeue`` puts a job back, by the step it failed at. A validation failure goes back
# to detected too, but with its file (Jobs.requeue_file); a detect failure has nothing to put back.
REQUEUE_STATE = {"archive": "detected", "route": "archived", "notify": "routed"}

# A job claimed this many times without an outcome being recorded has crashed its worker each
# time (a pathological file, say): it fails at its step instead of looping forever.
MAX_CLAIMS = 5

# Order per key (docs/design.md#order-per-key): a job is routed only once every earlier job of
# its key is settled. The settled states by name, in this one place: a state added later that
# ends a job (dismissed) is listed here, and any other state (held, say) keeps its key's later
# jobs waiting. The text is also the partial index jobs_order_key's condition: spelled exactly so.
ORDER_SETTLED = ("routed", "notified", "failed", "dismissed")
ORDER_PENDING = f"state NOT IN ({', '.join(repr(s) for s in ORDER_SETTLED)})"
