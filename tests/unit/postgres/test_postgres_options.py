"""PostgresRuntime pieces that need no running server: binaries lookup, options, ACL entries."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from homunculy_nb import _loop
from homunculy_nb.errors import ConfigurationError, RuntimeUnavailableError
from homunculy_nb.runtimes import postgres
from homunculy_nb.runtimes.base import Launch
from homunculy_nb.runtimes.postgres import PostgresRuntime, find_postgres_bin


def test_missing_binary_names_the_install_command(monkeypatch):
    monkeypatch.setattr(postgres, "_versioned_bin_dirs", lambda: [])
    monkeypatch.setenv("PATH", "")

    with pytest.raises(RuntimeUnavailableError, match="apt-get install postgresql"):
        find_postgres_bin("initdb")


def test_newest_versioned_bin_dir_wins(monkeypatch, tmp_path):
    for version in ("9.6", "15", "16"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "initdb").write_text("#!/bin/sh\n")
        (bin_dir / "initdb").chmod(0o755)
    monkeypatch.setattr(postgres, "_versioned_bin_dirs", lambda: [tmp_path / v / "bin" for v in ("16", "15", "9.6")])

    assert find_postgres_bin("initdb") == tmp_path / "16" / "bin" / "initdb"


def _launch(tmp_path: Path, **options) -> Launch:
    base = {"user": "postgres", "password": "pw", "databases": ["app"], "data_dir": tmp_path / "data",
            "persistent": False}
    base.update(options)
    ports = {"tcp": base.pop("port", 5999)}
    return Launch(name="db", run_dir=tmp_path, ports=ports, options=base)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"password": ""}, "non-empty password"),
        ({"password": None}, "non-empty password"),
        ({"databases": "app"}, "list of non-empty names"),
        ({"data_dir": None}, "data_dir"),
        ({"port": None}, "allocated TCP port"),
        ({"user": ""}, "superuser name"),
    ],
)
def test_invalid_launch_options_are_rejected_before_anything_runs(tmp_path, options, message):
    launch = _launch(tmp_path, **options)

    with pytest.raises(ConfigurationError, match=message):
        _loop.run(PostgresRuntime(use_template=False).start(launch), timeout=30)
    assert not (tmp_path / "data").exists()


def test_password_never_appears_in_the_configuration_error(tmp_path):
    launch = _launch(tmp_path, password="hunter2-secret", port=None)

    with pytest.raises(ConfigurationError) as caught:
        _loop.run(PostgresRuntime(use_template=False).start(launch), timeout=30)
    assert "hunter2-secret" not in str(caught.value)


def test_acl_entry_grants_search_and_keeps_group_permissions(tmp_path):
    directory = tmp_path / "private"
    directory.mkdir(mode=0o750)
    uid = 54321

    postgres._add_acl_search_entry(directory, uid)

    raw = os.getxattr(directory, "system.posix_acl_access")
    entries = {(tag, ident): perm for tag, perm, ident in struct.iter_unpack("<HHI", raw[4:])}
    assert entries[(0x02, uid)] == 0o1  # named user: search only
    assert entries[(0x04, 0xFFFFFFFF)] == 0o5  # owning group unchanged
    assert entries[(0x10, 0xFFFFFFFF)] == 0o5  # mask: union of the group class
    assert directory.stat().st_mode & 0o777 == 0o750


def test_template_key_separates_versions_users_and_locales():
    account = postgres.ServerAccount("postgres", 101, 104)
    spec = postgres._ClusterSpec(Path("/usr/lib/postgresql/15/bin/postgres"), Path("initdb"), "15", account,
                                 "postgres", "C.UTF-8")
    other = postgres._ClusterSpec(Path("/usr/lib/postgresql/16/bin/postgres"), Path("initdb"), "16", account,
                                  "admin", "C")

    assert spec.template_key != other.template_key
    assert "/" not in spec.template_key
