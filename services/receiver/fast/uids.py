"""UID conversion and validation remembered: pynetdicom checks every UID it is given
(``pynetdicom.utils.set_uid``: a validator and pydicom's conformance regex), and a peer's
association request names the same 100-odd SOP classes and transfer syntaxes every time
(``storescu`` proposes 128 presentation contexts), as every C-STORE names the same SOP
class. Profiled, those checks were a fifth of the interpreter's time spent negotiating an
association. Installed (and undone) only through :func:`services.receiver.fast.install`.

Only a check that passed is remembered, and only for a conformant UID, so every refusal
(ValueError, TypeError) and every "non-conformant" warning still comes from pynetdicom's
own code, each time. The validator in force is part of the key: changing
``pynetdicom._config.VALIDATORS`` takes effect at once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydicom.uid import UID
from pynetdicom import _config, dimse_primitives, pdu_items, pdu_primitives, presentation, utils

from services.receiver.fast.patching import Patch

_original_set_uid = utils.set_uid
#: Enough for the syntaxes of several peers; SOP Instance UIDs pass through it once each.
CACHE_SIZE = 4096


@lru_cache(maxsize=CACHE_SIZE)
def _checked(value: str | bytes, allow_empty: bool, validator: Any) -> UID | None:
    """``value`` as a UID when pynetdicom's checks pass silently, else None (not cached
    differently: None means "ask pynetdicom")."""
    if isinstance(value, bytes):
        if not value.isascii():  # pynetdicom's fallback codecs and their log lines
            return None
        value = value.decode("ascii")
    uid = UID(value)
    if not uid:
        return uid if allow_empty else None
    passed, _ = validator(uid)
    return uid if passed and uid.is_valid else None


def set_uid(
    value: str | bytes | UID | None,
    name: str,
    allow_empty: bool = True,
    allow_none: bool = True,
    validate: bool = True,
) -> UID | None:
    """``pynetdicom.utils.set_uid`` with passed checks remembered."""
    kind = type(value)
    # A UID that carries a private transfer syntax's encoding goes to pynetdicom as it is.
    if validate and (
        kind is str or kind is bytes or (kind is UID and not hasattr(value, "_PRIVATE_TS_ENCODING"))
    ):
        key = str(value) if kind is UID else value
        assert isinstance(key, str | bytes)
        known = _checked(key, allow_empty, _config.VALIDATORS["UI"])
        if known is not None:
            return known
    return _original_set_uid(value, name, allow_empty, allow_none, validate)


def patches() -> list[Patch]:
    return [
        Patch(module, "set_uid", set_uid)
        for module in (dimse_primitives, pdu_items, pdu_primitives, presentation)
    ]
