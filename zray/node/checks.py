"""What the agent checks of a message's content before it acts on it.

zray/protocol.py checks a message's shape (its fields' count and types); this checks what
the fields say, where acting on a wrong value would break the agent later, far from the
message (a task that can never be dispatched, a negative count). Each check returns why the
message cannot be used, or "" if it can; the agent rejects it (Agent.reject).
"""

from __future__ import annotations

import math

from zray import protocol as p
from zray.ids import OBJECT_ID_BYTES, TASK_ID_BYTES

MAX_RETURNS = 1 << 16


def submit_task(msg: p.SubmitTask) -> str:
    """(A function never exported is not checked here: such a task fails, so its submitter's
    get says so, as for any task that cannot run.)"""
    if len(msg.task_id) != TASK_ID_BYTES:
        return f"a task id is {TASK_ID_BYTES} bytes, not {len(msg.task_id)}"
    if not 0 <= msg.num_returns <= MAX_RETURNS:
        return f"num_returns={msg.num_returns} is not between 0 and {MAX_RETURNS}"
    if not all(type(ref) is bytes and len(ref) == OBJECT_ID_BYTES for ref in msg.deps):
        return f"an argument is not an object id ({OBJECT_ID_BYTES} bytes)"
    if not all(type(ref) is bytes and len(ref) in (OBJECT_ID_BYTES, TASK_ID_BYTES)
               for ref in msg.contained):  # (refs, and actor handles: an actor's id)
        return "a ref inside the arguments is neither an object id nor an actor id"
    if not all(type(name) is str and type(amount) in (int, float) and math.isfinite(amount)
               and amount >= 0 for name, amount in msg.resources.items()):
        return "resources must map names to finite amounts >= 0"
    is_call = bool(msg.actor_id) and not msg.actor_options
    if not is_call and not msg.function_id:
        return "a task or an actor's creation must name its function"
    if msg.actor_id and len(msg.actor_id) != TASK_ID_BYTES:
        return f"an actor id is {TASK_ID_BYTES} bytes, not {len(msg.actor_id)}"
    return ""
