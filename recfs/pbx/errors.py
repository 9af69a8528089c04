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
# Failures that stay failures, whatever the retry (a random's own errors are not
# among them: their numbers are undocumented, and a fresh random may work).
FINAL_ERRNOS = frozenset({*FILE_GONE, BAD_CREDENTIALS, LOCKED_OUT, "10003", "20000", "20001"})
# The simulator's answer to a random that is unknown, used, expired or bound to
# another file. The real number is undocumented; clients treat any errno alike.
SIM_BAD_RANDOM = "10024"


class PbxError(Exception):
    """The PBX answered, and the answer is a failure (or not an answer at all).

    What an errno means differs between the series (10004 is "parameter blank" on
    the S-Series, "token expired" on the P-Series): callers ask the properties
    below, never compare numbers of one series."""

    TEXTS: dict[str, str] = ERRNO_TEXT

    def __init__(self, operation: str, errno: str | None, detail: str | None = None):
        self.operation = operation
        self.errno = errno
        if errno is not None:
            message = f"PBX {operation} failed: errno {errno} ({self.errno_text})"
        else:
            message = f"PBX {operation} failed"
        if detail:
            message += f": {detail}"
        super().__init__(message)

    @property
    def errno_text(self) -> str:
        return self.TEXTS.get(self.errno or "", "unknown error number")

    @property
    def token_problem(self) -> bool:
        return self.errno in TOKEN_ERRNOS

    @property
    def bad_credentials(self) -> bool:
        return self.errno == BAD_CREDENTIALS

    @property
    def locked_out(self) -> bool:
        return self.errno == LOCKED_OUT

    @property
    def file_gone(self) -> bool:
        """The PBX no longer has the recording (its auto-cleanup deleted it)."""
        return self.errno in FILE_GONE

    @property
    def final(self) -> bool:
        """The same request will get the same answer: no point in retrying."""
        return self.errno in FINAL_ERRNOS


# P-Series (OpenAPI v1.0) error codes: ../shared/pbx-p-series.md.
P_ERRCODE_TEXT: dict[str, str] = {
    "-1": "failure (wrong credentials, for get_token)",
    "10001": "interface does not exist",
    "10004": "token expired",
    "10005": "access denied",
    "40001": "parameter error",
    "40002": "parameter error",
    "60001": "data not found",
    "60002": "maximum limitation exceeded",
    "70004": "account IP blocked",
}
P_TOKEN_EXPIRED = "10004"
P_FAILURE = "-1"
P_NOT_FOUND = "60001"
P_LIMIT = "60002"
P_IP_BLOCKED = "70004"


class PSeriesError(PbxError):
    """A P-Series failure: HTTP 200 with {"errcode": N, "errmsg": ...}."""

    TEXTS = P_ERRCODE_TEXT

    @property
    def token_problem(self) -> bool:
        return self.errno == P_TOKEN_EXPIRED

    @property
    def bad_credentials(self) -> bool:
        # -1 is the PBX's generic failure; from get_token it means the client ID
        # or secret is wrong.
        return self.errno == P_FAILURE and self.operation == "get_token"

    @property
    def locked_out(self) -> bool:
        return self.errno == P_IP_BLOCKED

    @property
    def file_gone(self) -> bool:
        return self.errno == P_NOT_FOUND and self.operation == "download"

    @property
    def final(self) -> bool:
        return self.file_gone or self.locked_out or self.errno in ("10001", "10005")


def failure_body(errno: str) -> dict[str, str]:
    return {"status": "Failed", "errno": errno}
