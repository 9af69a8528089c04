"""Recording names: untrusted text from the network that becomes a directory entry
and a URL parameter. One rule, used by the receiver, the catalog and the simulator."""

from __future__ import annotations

MAX_NAME_BYTES = 255


class BadName(ValueError):
    pass


def check_recording_name(name: object) -> str:
    """Return *name* if it is safe as a single path component, else raise BadName.

    Refuses rather than rewrites: a rewritten name could collide with another
    recording's real name.
    """
    if not isinstance(name, str):
        raise BadName("recording name is not a string")
    if not name:
        raise BadName("recording name is empty")
    if name in (".", ".."):
        raise BadName("recording name is . or ..")
    if name.startswith("."):
        # Hidden names are reserved for recfs's own control files.
        raise BadName("recording name starts with a dot")
    if "/" in name or "\0" in name:
        raise BadName("recording name contains / or NUL")
    if not name.isprintable():
        raise BadName("recording name contains unprintable characters")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadName("recording name is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise BadName(f"recording name is longer than {MAX_NAME_BYTES} bytes")
    return name
