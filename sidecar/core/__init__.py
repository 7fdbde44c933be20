"""The I/O-free core shared by the async and the sync API.

Everything that is not sending a command and waiting lives here: which command a verb sends
and how its reply is read (:mod:`~sidecar.core.ops`), the bookkeeping around one bounded call
— breaker, span, outcome, metrics (:mod:`~sidecar.core.calls`) — and the state of a resumable
run: lease, fencing token, restore, plan (:mod:`~sidecar.core.runstate`). The shells
(:mod:`sidecar.checkpointer` and friends for asyncio, :mod:`sidecar.sync` for threads) only
send and wait, so every rule is written and tested once.
"""
