"""The base of every typed Istio spec (model*.py), in a module of its own so that the model's
parts can import it without importing each other."""
from __future__ import annotations

import msgspec


class Spec(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True, frozen=True,
           omit_defaults=True):
    """Base for every spec message: Istio's camelCase names, unknown fields rejected.

    Defaults are omitted when encoding, so a spec turned back into a document (config dump,
    control-server push) reads like what the operator wrote.
    """
