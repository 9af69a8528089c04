"""Mount options: `-o key=value,...`, an optional TOML file with the same keys, and
the defaults. Options on the command line win over the file.

Unknown options are errors (a typo must not silently mount with defaults), except
the ones mount(8), fstab and systemd add, which are accepted and dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from recfs.catalog.postgres import PgSettings, is_postgres_url
from recfs.ingest.gate import parse_networks
from recfs.pbx.client import normalise_api_version
from recfs.pbx.tls import parse_fingerprint

DEFAULT_LISTEN = ("0.0.0.0", 8260)
API_SERIES = ("s-series", "p-series")

# Said by mount(8), fstab or systemd; meaningless to recfs, harmless to accept.
_IGNORED = {"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults",
            "rw", "ro", "noexec", "exec", "nosuid", "suid", "nodev", "dev", "noatime",
            "atime", "relatime"}
_IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=")

_FLAGS = {"insecure", "allow_other", "allow_root", "foreground", "direct_io", "nonempty"}
_INTS = {"max_downloads", "max_uploads", "readahead", "uid", "gid", "heartbeat"}
_FLOATS = {"io_timeout", "backfill_interval", "event_heartbeat"}
_STRINGS = {"user", "password_file", "api", "api_version", "cafile", "fingerprint", "listen",
            "report_url", "report_from", "metrics", "views",
            "state_dir", "cache_dir", "prefetch", "umask", "log_level", "log_file", "config",
            "cache_size", "cache_min_free", "archive", "archive_endpoint", "archive_region",
            "archive_credentials", "archive_profile", "catalog", "catalog_password_file",
            "catalog_name"}


class OptionError(ValueError):
    pass


@dataclass
class MountOptions:
    source: str
    mountpoint: str
    user: str = "api"
    password_file: str | None = None
    api: str = "s-series"  # or "p-series": which API the PBX speaks (../shared/pbx-p-series.md)
    api_version: str = "v2.0.0"  # S-Series only
    cafile: str | None = None
    insecure: bool = False
    listen: tuple[str, int] = DEFAULT_LISTEN
    report_url: str | None = None
    fingerprint: str | None = None  # sha256:<hex>: pin the PBX's certificate
    metrics: tuple[str, int] | None = None  # HOST:PORT of the Prometheus endpoint
    views: str = "all"  # "none": only the date tree (backups then read each file once)
    report_from: str | None = None  # CIDRs allowed to push reports; default: SOURCE's addresses
    state_dir: str | None = None
    cache_dir: str | None = None
    prefetch: str = "new"
    cache_size: str | None = None  # SIZE (20G, 512M) or N% of the cache filesystem
    cache_min_free: str | None = None  # likewise; None = the defaults in recfs/content/cache.py
    max_downloads: int = 2
    readahead: int = 0  # downloads each open earns while a tool copies a day's files
    io_timeout: float = 30.0
    heartbeat: int = 300
    backfill_interval: float = 600.0  # re-check recent CDR history this often
    event_heartbeat: float = 20.0  # P-Series: the event socket's heartbeat (the PBX cuts at 60 s)
    allow_other: bool = False
    allow_root: bool = False
    # Reads bypass the kernel's page cache (see fuse_ops.py); no: mmap(MAP_SHARED) works.
    direct_io: bool = True
    # Mount over a directory that holds files (or over another filesystem): they are
    # hidden until the unmount (recfs/service/mountpoint.py).
    nonempty: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    log_level: str = "INFO"
    log_file: str | None = None
    foreground: bool = False
    password: str | None = field(default=None, repr=False)  # only from RECFS_PASSWORD
    # The archive (recfs/archive/): s3://BUCKET[/PREFIX] or file:///PATH; None: none.
    archive: str | None = None
    archive_endpoint: str | None = None  # an S3-compatible store's URL; None: AWS
    archive_region: str = "us-east-1"
    archive_credentials: str | None = None  # AWS shared-credentials file; None: AWS_* env
    archive_profile: str = "default"
    max_uploads: int = 2
    # The shared catalog (recfs/catalog/postgres.py): postgresql://USER@HOST:PORT/DB, or
    # None: the SQLite catalog in state_dir. A reader mount has it as SOURCE instead.
    catalog: str | None = None
    catalog_password_file: str | None = None
    catalog_name: str | None = None  # this PBX's name in it; default: [pbx.NAME] or HOST-PORT
    # Several PBXs in one mount ([pbx.NAME] tables in the config): NAME → its options.
    pbxs: dict[str, "MountOptions"] | None = None

    @property
    def slug(self) -> str:
        """A directory name for this PBX's state and cache (a reader mount's: for its
        catalog's)."""
        parts = urlsplit(self.source)
        host = (parts.hostname or "pbx").replace(":", "_")
        if self.is_reader:
            return f"{host}-{parts.port or 5432}-{parts.path.strip('/') or 'postgres'}"
        return f"{host}-{parts.port or 8088}"

    @property
    def is_reader(self) -> bool:
        """SOURCE is a shared catalog, not a PBX: a reader mount."""
        return is_postgres_url(self.source)

    def catalog_settings(self) -> PgSettings | None:
        """The shared catalog this mount uses, None for the SQLite one."""
        url = self.source if self.is_reader else self.catalog
        return PgSettings(url, self.catalog_password_file) if url else None

    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        if os.getuid() == 0:
            return Path("/var/lib/recfs") / self.slug
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(_home(), ".local", "state")
        return Path(base) / "recfs" / self.slug

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        if os.getuid() == 0:
            return Path("/var/cache/recfs") / self.slug
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(_home(), ".cache")
        return Path(base) / "recfs" / self.slug

    def read_password(self) -> str:
        """Read each time a login needs it, so a corrected password file is picked up."""
        if self.password_file:
            try:
                if os.stat(self.password_file).st_mode & 0o004:
                    raise OptionError(f"password_file {self.password_file} is readable by every "
                                      f"user: chmod o-r it (e.g. chmod 600) first")
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise OptionError(f"cannot read password_file {self.password_file}: {exc.strerror}") from None
            return text.rstrip("\r\n")
        if self.password is not None:
            return self.password
        raise OptionError("no password: give -o password_file=FILE or set RECFS_PASSWORD")


def _home() -> str:
    # systemd units may run without HOME.
    home = os.environ.get("HOME")
    if home:
        return home
    import pwd
    return pwd.getpwuid(os.getuid()).pw_dir


# Options whose value is itself a comma list: `-o report_from=10.0.0.1,10.0.0.2`.
_LIST_VALUED = {"report_from"}


def split_options(*texts: str) -> dict[str, str | bool]:
    """`-o a=1,b,c=2` (given once or several times) as a dict; a bare word is True."""
    result: dict[str, str | bool] = {}
    previous = ""
    items = (part.strip() for text in texts for part in text.split(","))
    for item in filter(None, items):
        key, sep, value = item.partition("=")
        if not sep and previous in _LIST_VALUED and _looks_like_address(item):
            result[previous] = f"{result[previous]},{item}"
            continue
        previous = key.strip()
        result[previous] = value.strip() if sep else True
    return result


def _looks_like_address(item: str) -> bool:
    try:
        parse_networks(item)
    except ValueError:
        return False
    return True


def _parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionError(f"{key} must be HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _scalar(value: object) -> str | int | float:
    """A number's raw form from the command line (str) or a TOML file (int, float)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    raise TypeError(f"not a number: {value!r}")


def _coerce(key: str, value: object) -> object:
    if key in _FLAGS:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"{key} is a flag, not {value!r}")
    if value is True:
        raise OptionError(f"option {key} needs a value ({key}=...)")
    if key in _INTS:
        try:
            return int(_scalar(value))
        except (TypeError, ValueError):
            raise OptionError(f"{key} must be a whole number, not {value!r}") from None
    if key in _FLOATS:
        try:
            return float(_scalar(value))
        except (TypeError, ValueError):
            raise OptionError(f"{key} must be a number, not {value!r}") from None
    return str(value)


def build_options(source: str, mountpoint: str, raw: dict[str, str | bool],
                  environ: Mapping[str, str] | None = None) -> MountOptions:
    """Options from the command line (*raw*) and the config file it names.

    A config file with `[pbx.NAME]` tables describes several PBXs in one mount: each
    appears as the directory NAME with its own session, report path, catalog and
    cache; SOURCE is then only a label (fstab's first column), e.g. `recfs`."""
    environ = os.environ if environ is None else environ
    merged: dict[str, object] = {}
    config_file = raw.get("config")
    if isinstance(config_file, str):
        try:
            with open(config_file, "rb") as f:
                merged.update(tomllib.load(f))
        except OSError as exc:
            raise OptionError(f"cannot read config {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise OptionError(f"config {config_file} is not valid TOML: {exc}") from None
    tables = merged.pop("pbx", None)
    merged.update(raw)
    merged.pop("config", None)

    opts = MountOptions(source=source, mountpoint=mountpoint)
    _apply(opts, merged)
    if opts.is_reader:
        _check_reader(opts, tables)
        return opts
    if tables is None:
        _check_pbx(opts, environ)
        return opts
    if not isinstance(tables, dict) or not tables or \
            not all(isinstance(t, dict) for t in tables.values()):
        raise OptionError("[pbx.NAME] tables in the config must each describe one PBX")
    if "catalog_name" in merged:
        raise OptionError("catalog_name names one PBX: in a mount of several, each is named "
                          "by its [pbx.NAME] (or a catalog_name in its table)")
    opts.pbxs = {}
    for name, table in tables.items():
        if not _safe_dir_name(name):
            raise OptionError(f"[pbx.{name}]: not usable as a directory name")
        mount_wide = _MOUNT_WIDE & table.keys()
        if mount_wide:
            raise OptionError(f"[pbx.{name}]: {', '.join(sorted(mount_wide))} apply to the whole "
                              f"mount; set them outside the [pbx] tables")
        if "source" not in table:
            raise OptionError(f"[pbx.{name}] needs source = \"https://...\"")
        part = MountOptions(source=str(table["source"]), mountpoint=mountpoint)
        _apply(part, {**merged, **{k: v for k, v in table.items() if k != "source"}})
        part.state_dir = str(table.get("state_dir") or opts.resolved_state_dir() / name)
        part.cache_dir = str(table.get("cache_dir") or opts.resolved_cache_dir() / name)
        try:
            _check_pbx(part, environ)
        except OptionError as exc:
            raise OptionError(f"[pbx.{name}]: {exc}") from None
        opts.pbxs[name] = part
    return opts


# Options that belong to the mount as a whole, never to one PBX of several.
_MOUNT_WIDE = {"listen", "metrics", "allow_other", "allow_root", "direct_io", "uid", "gid",
               "umask", "foreground", "log_level", "log_file", "config", "nonempty"}


def _safe_dir_name(name: str) -> bool:
    from recfs.pbx.names import BadName, check_recording_name
    try:
        check_recording_name(name)
    except BadName:
        return False
    return True


def _apply(opts: MountOptions, merged: dict[str, object]) -> None:
    for key, value in merged.items():
        # mount(8)'s bare `user` is not our `user=NAME`.
        if (key in _IGNORED and value is True) or key.startswith(_IGNORED_PREFIXES):
            continue
        if key not in _FLAGS | _INTS | _FLOATS | _STRINGS:
            raise OptionError(f"unknown option {key!r}")
        setattr(opts, key, _checked(key, _coerce(key, value)))


def _checked(key: str, value: object) -> object:
    """The option's value in its final form, or OptionError saying what is wrong."""
    if key in ("listen", "metrics"):
        return _parse_listen(str(value), key)
    if key == "umask":
        try:
            return int(str(value), 8)
        except ValueError:
            raise OptionError(f"umask must be octal, not {value!r}") from None
    if key == "api_version":
        try:
            return normalise_api_version(str(value))
        except ValueError as exc:
            raise OptionError(str(exc)) from None
    if key == "api" and value not in API_SERIES:
        raise OptionError(f"api must be {' or '.join(API_SERIES)}, not {value!r}")
    if key == "event_heartbeat" and not 0 < float(_scalar(value)) < 60:
        raise OptionError("event_heartbeat must be more than 0 and less than 60 seconds")
    if key == "views" and value not in ("all", "none"):
        raise OptionError(f"views must be all or none, not {value!r}")
    if key == "fingerprint":
        try:
            parse_fingerprint(str(value))
        except ValueError as exc:
            raise OptionError(str(exc)) from None
    if key == "report_from":
        try:
            parse_networks(str(value))
        except ValueError as exc:
            raise OptionError(str(exc)) from None
    if key == "prefetch" and value not in ("new", "none", "all"):
        raise OptionError(f"prefetch must be new, none or all, not {value!r}")
    if key in ("cache_size", "cache_min_free"):
        from recfs.content.cache import parse_size
        try:
            parse_size(str(value))
        except ValueError:
            raise OptionError(f"{key} must be a size such as 20G, 500M or 10%, "
                              f"not {value!r}") from None
    if key == "backfill_interval" and float(_scalar(value)) < 1:
        raise OptionError("backfill_interval must be at least 1 second")
    if key in ("max_downloads", "max_uploads") and int(_scalar(value)) < 1:
        raise OptionError(f"{key} must be at least 1")
    if key == "archive" and not str(value).startswith(("s3://", "file:///")):
        raise OptionError(f"archive must be s3://BUCKET[/PREFIX] or file:///PATH, not {value!r}")
    if key == "catalog":
        if not is_postgres_url(str(value)):
            raise OptionError(f"catalog must be postgresql://USER@HOST:PORT/DB, not {value!r}")
        if urlsplit(str(value)).password is not None:
            raise OptionError("put the catalog's password in catalog_password_file= or "
                              "~/.pgpass, not in the URL (it would show in ps and in fstab)")
    if key == "catalog_name" and not _safe_dir_name(str(value)):
        raise OptionError(f"catalog_name must be usable as a directory name, not {value!r}")
    if key == "readahead" and not 0 <= int(_scalar(value)) <= 16:
        raise OptionError("readahead must be from 0 to 16")
    return value


def _check_reader(opts: MountOptions, tables: object) -> None:
    """A reader mount: SOURCE is the catalog; the PBXs are those in it."""
    if tables is not None:
        raise OptionError("a reader mount (SOURCE is a catalog) takes no [pbx.NAME] tables: "
                          "it serves the PBXs the catalog holds")
    if opts.catalog:
        raise OptionError("a reader mount's catalog is its SOURCE: drop catalog=")
    if urlsplit(opts.source).password is not None:
        raise OptionError("put the catalog's password in catalog_password_file= or ~/.pgpass, "
                          "not in the URL (it would show in ps and in fstab)")


def _check_pbx(opts: MountOptions, environ) -> None:
    """What one PBX needs: a URL, a password, an existing cafile."""
    parts = urlsplit(opts.source)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OptionError(f"SOURCE must be the PBX's URL, such as https://pbx.example:8088, "
                          f"not {opts.source!r}")
    if not opts.password_file and "RECFS_PASSWORD" in environ:
        opts.password = environ["RECFS_PASSWORD"]
    if not opts.password_file and opts.password is None:
        raise OptionError("no password: give -o password_file=FILE or set RECFS_PASSWORD")
    if opts.cafile and not os.path.isfile(opts.cafile):
        raise OptionError(f"cafile {opts.cafile} does not exist")


def report_target_fields(opts: MountOptions, port: int, secret: str) -> tuple[int, str, str]:
    """(port, url, urltag) to register at login: urltag 1 with report_url (NAT), else
    the receiver's own port. Either way the path ends in the secret."""
    if opts.report_url:
        hostport, _, _path = opts.report_url.partition("/")
        _host, _, rport = hostport.rpartition(":")
        if not rport.isdigit():
            raise OptionError(f"report_url must be HOST:PORT/PATH, not {opts.report_url!r}")
        return int(rport), f"{opts.report_url.rstrip('/')}/{secret}", "1"
    return port, f"/recfs/{secret}", "0"

