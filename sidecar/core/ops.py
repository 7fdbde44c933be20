"""Operations as data: the command a verb sends and how its reply becomes the verb's result.

An :class:`Op` is built without I/O (validation, serialization and argument building happen
here) and carried out by a shell: ``await cp.perform(op)`` (asyncio) or ``cp.perform(op)``
(threads). ``parse`` runs on the reply inside the call's budget; a lease conflict it raises is
recorded as outcome ``rejected``, an undecodable stored value as ``corrupt``.

Both are built on every checkpoint call and never changed after: plain slotted dataclasses,
not frozen ones, whose ``__init__`` pays an ``object.__setattr__`` per field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from sidecar.lua import Script
from sidecar.models import EventKind

if TYPE_CHECKING:
    from sidecar.core.durability import Durability

T_co = TypeVar("T_co", covariant=True)
Arg: TypeAlias = str | bytes | int | float


@dataclass(slots=True)
class Command:
    """One Redis command: EVALSHA of ``script`` (EVAL on NOSCRIPT), or the plain ``name``.

    ``wait``: a save to confirm only once replicas / the AOF acknowledged it (WAIT, WAITAOF in
    the same round trip); the store then answers a :class:`~sidecar.core.durability.Replicated`.
    """

    name: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...] = ()
    script: Script | None = None
    wait: Durability | None = None

    @property
    def db_operation(self) -> str:
        """The ``db.operation.name`` of the span: EVALSHA for scripts, else the command."""
        return "EVALSHA" if self.script is not None else self.name


def script_call(
    script: Script, keys: tuple[str, ...], args: tuple[Arg, ...] = (),
    wait: Durability | None = None,
) -> Command:  # fmt: skip
    return Command("EVALSHA", keys, args, script, wait)


def _always(_: Any) -> bool:
    return True


def _identity(reply: Any) -> Any:
    return reply


class Sizes:
    """Logical (serialized JSON) and stored (sealed) bytes of one op's sections: known when a
    save is built, added up by a load's parser as it opens each value. Recorded with the
    call's outcome (``checkpoint_section_bytes``, ``checkpoint_section_stored_bytes``)."""

    __slots__ = ("logical", "stored")

    def __init__(self, logical: int = 0, stored: int = 0) -> None:
        self.logical = logical
        self.stored = stored


@dataclass(slots=True)
class Op(Generic[T_co]):
    """One instrumented, budget-bounded checkpoint operation of one run.

    ``nothing`` is what best-effort mode returns on an outage; ``always_raise`` makes outages
    raise whatever ``strict`` says (reads whose "nothing" would be a lie, lease acquisition).
    ``event`` is emitted after a successful call when ``event_if(result)`` holds.
    """

    operation: str
    command: Command
    ids: tuple[str, str]
    slot: int | None
    nothing: T_co
    parse: Callable[[Any], T_co] = field(default=_identity)
    section: str | None = None
    sizes: Sizes | None = None
    always_raise: bool = False
    event: EventKind | None = None
    event_if: Callable[[Any], bool] = field(default=_always)
