"""Error numbers of the S-Series API and the exception that carries them.

The PBX always answers HTTP 200; failure is ``{"status":"Failed","errno":"N"}``.
"""

from __future__ import annotations

# v1.0.1 appendix; newer firmware has more, which must still produce a clear error.
ERRNO_TEXT: dict[str, str] = {
    "10003": "unsupported request",
    "10004": "required parameter blank",
    "10023": "audio file does not exist",
    "20000": "only JSON is accepted",
    "20001": "only POST is accepted",
    "20002": "client IP locked out after failed logins",
    "20003": "bad username or password",
    "20004": "no such token",
    "20005": "token blank",
    "20006": "token timed out",
    "20007": "data blank",
    "20008": "wrong port",
    "20014": "recording file does not exist",  # K2/S1000-era firmware
}

TOKEN_ERRNOS = frozenset({"20004", "20005", "20006"})
LOCKED_OUT = "20002"
BAD_CREDENTIALS = "20003"
NO_SUCH_FILE = "10023"
# Every answer that means "the PBX no longer has the file" (auto-cleanup deleted it).
FILE_GONE = frozenset({NO_SUCH_FILE, "20014"})
# The simulator's answer to a random that is unknown, used, expired or bound to
# another file. The real number is undocumented; clients treat any errno alike.
SIM_BAD_RANDOM = "10024"


class PbxError(Exception):
    """The PBX answered, and the answer is a failure (or not an answer at all)."""

    def __init__(self, operation: str, errno: str | None, detail: str | None = None):
        self.operation = operation
        self.errno = errno
        if errno is not None:
            text = ERRNO_TEXT.get(errno, "unknown error number")
            message = f"PBX {operation} failed: errno {errno} ({text})"
        else:
            message = f"PBX {operation} failed"
        if detail:
            message += f": {detail}"
        super().__init__(message)

    @property
    def token_problem(self) -> bool:
        return self.errno in TOKEN_ERRNOS


def failure_body(errno: str) -> dict[str, str]:
    return {"status": "Failed", "errno": errno}
