"""The extended attributes the mount shows. Free of imports, so that `recfs status`
(which reads STATUS_XATTR through the mount) starts fast under any user's Python."""

XATTR_PREFIX = "user.recfs."
# user.recfs.<field> for each CallRecord field a person or a backup tool wants kept.
XATTR_FIELDS = ("caller", "callee", "type", "status", "duration", "talk_duration", "callid",
                "timestart", "trunk", "did", "pbx_serial")

# The SHA-256 of a recording's bytes, once recfs has downloaded and verified them
# (the archive keeps it with the object).
SHA256_XATTR = "user.recfs.sha256"

# On the mount's root directory, readable by name but not listed: `rsync -aX` of the
# tree must not copy a stale status into a backup (and a file's `user.recfs.status`
# is its call's status).
STATUS_XATTR = "user.recfs.mount"
