"""The seam for config documents from outside the control server (the Kubernetes API).

The control server knows nothing of Kubernetes (remora/xds must not import remora/kube):
`remora control --kubernetes` builds a kube/registry.py source in the CLI and hands it in
as a `DocumentSource`. Its documents join the candidate set beside the registered
sidecars' (the store's `extra`), so one validation covers files, applied resources,
sidecars and the API's objects together: an invalid object from the API rejects the whole
candidate and the last good config stays, as an invalid file does. A change calls
`on_change`, which the server debounces like a sidecar registering.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from remora.xds.sources import Documents, identity

if TYPE_CHECKING:
    from remora.xds.metrics import ControlMetrics


class SourceError(Exception):
    """A source that cannot start at all (no usable credentials or address): not retried.
    The server raises it for any exception of a source's start(), naming the source, since
    the source's own exception classes live in a layer this one does not import."""


class DocumentSource(Protocol):
    name: str   # the reason a rebuild it caused is recorded under ("kubernetes")

    async def start(self, on_change: Callable[[], None], metrics: ControlMetrics) -> None:
        """Begin reading; return once the first full read is done (or a timeout passed,
        reading goes on in the background). Raise when it cannot start at all. Tasks it
        makes are named after the source (`<name> ...`); stop() ends them all.
        tests/contract/test_document_source.py is the contract."""

    async def stop(self) -> None: ...

    def documents(self) -> Documents:
        """The documents now: (parsed document, where it came from) pairs. Called on every
        rebuild of the candidate set, so it should be cheap when nothing changed."""

    def status(self) -> dict[str, Any]:
        """What /v1/status shows of the source (sync state, positions, errors)."""


def names(sources: Sequence[DocumentSource]) -> str:
    """The sources' names, as a rebuild they caused is recorded ("kubernetes")."""
    return ", ".join(source.name for source in sources)


async def start_all(sources: Sequence[DocumentSource], on_change: Callable[[], None],
                    metrics: ControlMetrics) -> None:
    """Start each source in turn; any failure is a SourceError naming the source."""
    for source in sources:
        try:
            await source.start(on_change, metrics)
        except Exception as error:
            raise SourceError(f"{source.name}: {error}") from error


def combined(registry: Callable[[Documents], Documents],
             sources: Sequence[DocumentSource]) -> Callable[[Documents], Documents]:
    """The store's `extra`: the sources' documents, then the registry's for user + sources
    (the registry reads the ports of the Services it sees). A registered sidecar whose address
    is already a WorkloadEntry from a source (its pod) adds no second endpoint: the pod's
    entry knows the pod's labels and ports."""
    def extra(user: Documents) -> Documents:
        external = [doc for source in sources for doc in source.documents()]
        addresses = {_address(body) for body, _ in external if _address(body) is not None}
        registered = [(body, where) for body, where in registry(user + external)
                      if _address(body) is None or _address(body) not in addresses]
        return external + registered
    return extra


def _address(body: Any) -> tuple[str, str] | None:
    """(namespace, address) of a WorkloadEntry document, else None."""
    if not isinstance(body, dict) or body.get("kind") != "WorkloadEntry":
        return None
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    ref = identity(body)
    address = spec.get("address")
    return (ref.split("/")[1], address) if ref and isinstance(address, str) else None
