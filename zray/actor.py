"""Ray's ``ray.actor`` module, by its names: ``ActorHandle``, ``ActorClass``, ``method``,
and ``exit_actor()``."""

from __future__ import annotations

import threading

from zray.actors.handle import ActorClass, ActorHandle, method

__all__ = ["ActorClass", "ActorHandle", "exit_actor", "method"]


def exit_actor() -> None:
    """End the calling actor, for good (no restart): its worker stops, the call that
    called this and those queued fail with ActorDiedError ("it called exit_actor()")."""
    from zray import core
    from zray import protocol as p

    client = core.current()
    actor_id = client.context.actor_id if client is not None else b""
    if client is None or client.kind != "worker" or not actor_id:
        raise TypeError("exit_actor() is called outside an actor: call it from one of its "
                        "methods")
    client.tx.send(p.KillActor(actor_id, True))
    threading.Event().wait()  # (the agent stops this process; nothing after this runs)
