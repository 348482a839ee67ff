"""`check_files=False`: the configuration of `pop3d deliver`, which an MTA runs without the
groups the TLS key and the secret may be readable by, loads without checking those files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pop3d.config import ConfigError, load

WITH_FILES = """
[server]
tls_listen = []
[tls]
cert = "{tmp}/missing-cert.pem"
key = "{tmp}/missing-key.pem"
[auth]
secret_file = "{tmp}/missing-secret"
"""


def _keys(path: Path, **kwargs: bool) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, **kwargs)
    return [problem.key for problem in caught.value.problems]


def test_missing_tls_and_secret_files_are_errors_by_default(tmp_path: Path) -> None:
    path = tmp_path / "pop3d.toml"
    path.write_text(WITH_FILES.format(tmp=tmp_path))
    assert _keys(path) == ["tls.cert", "tls.key", "auth.secret_file"]


def test_without_file_checks_the_same_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "pop3d.toml"
    path.write_text(WITH_FILES.format(tmp=tmp_path))
    loaded, _ = load(path, check_files=False)
    assert loaded.tls.key == f"{tmp_path}/missing-key.pem"
    assert loaded.auth.secret_file == f"{tmp_path}/missing-secret"


def test_without_file_checks_every_other_problem_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pop3d.toml"
    path.write_text(WITH_FILES.format(tmp=tmp_path) + "[limits]\nline_length = 10\n")
    assert _keys(path, check_files=False) == ["limits.line_length"]
