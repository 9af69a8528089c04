import pytest

from recfs.service.config import OptionError, build_options, report_target_fields, split_options

SRC = "https://pbx.example:8088"


def opts(text, environ=None, **kw):
    return build_options(SRC, "/mnt", split_options(text), environ or {"RECFS_PASSWORD": "pw"})


def test_defaults():
    o = opts("")
    assert (o.user, o.api_version, o.listen, o.prefetch, o.max_downloads, o.direct_io) == \
        ("api", "v2.0.0", ("0.0.0.0", 8260), "new", 2, True)
    assert o.read_password() == "pw"
    assert report_target_fields(o, 8260, "s" * 32) == (8260, "/recfs/" + "s" * 32, "0")


def test_options_parse_and_fstab_words_are_ignored():
    o = opts("user=rec,api_version=1.1.0,listen=127.0.0.1:9000,prefetch=none,max_downloads=3,"
             "umask=027,uid=5,allow_other,_netdev,nofail,x-systemd.automount,defaults")
    assert (o.user, o.api_version, o.listen, o.prefetch, o.max_downloads, o.umask, o.uid,
            o.allow_other) == ("rec", "v1.1.0", ("127.0.0.1", 9000), "none", 3, 0o27, 5, True)


@pytest.mark.parametrize("text,direct_io", [("direct_io=no", False), ("direct_io=off", False),
                                            ("direct_io", True), ("direct_io=yes", True)])
def test_direct_io_is_a_flag(text, direct_io):
    assert opts(text).direct_io is direct_io


@pytest.mark.parametrize("text", ["bogus=1", "listen=nope", "prefetch=some", "max_downloads=0",
                                  "api_version=v9", "umask=9x", "uid=abc", "cafile",
                                  "report_from=10.0.0.0/33", "direct_io=maybe"])
def test_bad_options_are_clear_errors(text):
    with pytest.raises(OptionError):
        opts(text)


def test_password_is_required():
    with pytest.raises(OptionError, match="password"):
        build_options(SRC, "/mnt", {}, {})


def test_bad_source():
    with pytest.raises(OptionError, match="SOURCE"):
        build_options("pbx.example", "/mnt", {}, {"RECFS_PASSWORD": "x"})


def test_toml_config_and_command_line_wins(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    pw.chmod(0o600)
    conf = tmp_path / "pbx.toml"
    conf.write_text(f'user = "fromtoml"\npassword_file = "{pw}"\nmax_downloads = 4\n'
                    f'prefetch = "none"\n')
    o = build_options(SRC, "/mnt", split_options(f"config={conf},max_downloads=1"), {})
    assert (o.user, o.max_downloads, o.prefetch) == ("fromtoml", 1, "none")
    assert o.read_password() == "from-file"


def test_report_url_registers_urltag_1():
    o = opts("report_url=gw.example:18260/pbx")
    assert report_target_fields(o, 8260, "abc") == (18260, "gw.example:18260/pbx/abc", "1")


def test_world_readable_password_file_is_refused(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    o = build_options(SRC, "/mnt", {"password_file": str(pw)}, {})
    with pytest.raises(OptionError, match="readable by every user"):
        o.read_password()
    pw.chmod(0o640)
    assert o.read_password() == "secret"


def test_report_from_takes_a_comma_list_inside_o():
    o = opts("report_from=10.0.0.1,10.0.1.0/24,prefetch=none")
    assert (o.report_from, o.prefetch) == ("10.0.0.1,10.0.1.0/24", "none")


def test_several_pbxs_from_one_config(tmp_path):
    conf = tmp_path / "all.toml"
    conf.write_text(f'''
state_dir = "{tmp_path / 'state'}"
cache_dir = "{tmp_path / 'cache'}"
max_downloads = 3
[pbx.main]
source = "https://pbx1.example:8088"
[pbx.branch]
source = "https://pbx2.example:8088"
user = "branchapi"
max_downloads = 1
''')
    o = build_options("recfs", "/mnt", split_options(f"config={conf},listen=127.0.0.1:9000"),
                      {"RECFS_PASSWORD": "pw"})
    assert sorted(o.pbxs) == ["branch", "main"]
    main, branch = o.pbxs["main"], o.pbxs["branch"]
    assert (main.source, main.user, main.max_downloads) == ("https://pbx1.example:8088", "api", 3)
    assert (branch.user, branch.max_downloads) == ("branchapi", 1)
    assert main.state_dir == str(tmp_path / "state" / "main")
    assert branch.cache_dir == str(tmp_path / "cache" / "branch")
    assert o.listen == ("127.0.0.1", 9000)


@pytest.mark.parametrize("table, message", [
    ('[pbx.main]\nsource = "https://a:8088"\nlisten = "0.0.0.0:1"\n', "whole mount"),
    ('[pbx."a/b"]\nsource = "https://a:8088"\n', "directory name"),
    ('[pbx.main]\nuser = "x"\n', "needs source"),
    ('[pbx.main]\nsource = "pbx.example"\n', "SOURCE must be"),
])
def test_bad_pbx_tables(tmp_path, table, message):
    conf = tmp_path / "bad.toml"
    conf.write_text(table)
    with pytest.raises(OptionError, match=message):
        build_options("recfs", "/mnt", {"config": str(conf)}, {"RECFS_PASSWORD": "pw"})


def test_shared_catalog_options():
    o = opts("catalog=postgresql://recfs@db:5432/rec,catalog_name=site-a")
    settings = o.catalog_settings()
    assert settings is not None and settings.shown == "postgresql://recfs@db:5432/rec"
    assert (o.is_reader, o.catalog_name) == (False, "site-a")
    assert opts("").catalog_settings() is None
    with pytest.raises(OptionError, match="postgresql://"):
        opts("catalog=mysql://db/rec")
    with pytest.raises(OptionError, match="not in the URL"):
        opts("catalog=postgresql://recfs:hunter2@db/rec")
    with pytest.raises(OptionError, match="directory name"):
        opts("catalog=postgresql://recfs@db/rec,catalog_name=../x")


def test_reader_mount_options(tmp_path):
    reader = build_options("postgresql://recfs@db:5432/rec", "/mnt",
                           split_options("archive_endpoint=http://s3:9000"), {})
    assert reader.is_reader and reader.slug == "db-5432-rec"  # no password needed
    with pytest.raises(OptionError, match="not in the URL"):
        build_options("postgresql://recfs:pw@db/rec", "/mnt", {}, {})
    with pytest.raises(OptionError, match="catalog is its SOURCE"):
        build_options("postgresql://recfs@db/rec", "/mnt",
                      split_options("catalog=postgresql://recfs@db/other"), {})
    config = tmp_path / "c.toml"
    config.write_text('[pbx.a]\nsource = "https://a:8088"\n')
    with pytest.raises(OptionError, match="no \\[pbx.NAME\\] tables"):
        build_options("postgresql://recfs@db/rec", "/mnt", {"config": str(config)}, {})


def test_catalog_name_belongs_to_one_pbx(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('catalog = "postgresql://recfs@db/rec"\ncatalog_name = "x"\n'
                      '[pbx.a]\nsource = "https://a:8088"\n[pbx.b]\nsource = "https://b:8088"\n')
    with pytest.raises(OptionError, match="catalog_name names one PBX"):
        build_options("recfs", "/mnt", {"config": str(config)}, {"RECFS_PASSWORD": "pw"})
def test_api_series_on_the_command_line_and_per_pbx_table(tmp_path):
    assert opts("").api == "s-series"
    o = opts("api=p-series,event_heartbeat=15")
    assert (o.api, o.event_heartbeat) == ("p-series", 15.0)
    for bad in ("api=q-series", "api=p", "event_heartbeat=60", "event_heartbeat=0"):
        with pytest.raises(OptionError):
            opts(bad)
    conf = tmp_path / "both.toml"
    conf.write_text('[pbx.old]\nsource = "https://pbx1.example:8088"\n'
                    '[pbx.new]\nsource = "https://cloud.example"\napi = "p-series"\n')
    o = build_options("recfs", "/mnt", {"config": str(conf)}, {"RECFS_PASSWORD": "pw"})
    assert (o.pbxs["old"].api, o.pbxs["new"].api) == ("s-series", "p-series")
