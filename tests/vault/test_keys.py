"""KEK loading and generation."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from vault import (
    ENV_VAR,
    Kek,
    KekError,
    generate_kek_file,
    load_kek,
    load_kek_env,
    load_kek_file,
)


def test_generate_kek_file_is_private_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    kek = generate_kek_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_kek_file(path) == kek
    before = path.read_bytes()
    with pytest.raises(KekError, match="refusing to overwrite"):
        generate_kek_file(path)
    assert path.read_bytes() == before


def test_generate_kek_file_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_kek_file(tmp_path / "kek")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "kek").stat().st_mode) == 0o600


def test_load_raw_and_base64_files(tmp_path: Path) -> None:
    key = os.urandom(32)
    (tmp_path / "raw").write_bytes(key)
    (tmp_path / "b64").write_text("  " + base64.b64encode(key).decode() + "\n")
    assert load_kek_file(tmp_path / "raw").key == key
    assert load_kek_file(tmp_path / "b64").key == key
    assert load_kek(tmp_path / "raw") == load_kek(tmp_path / "b64")


@pytest.mark.parametrize(
    "content",
    [b"\x00" * 31, b"\xff" * 33, base64.b64encode(b"\x01" * 16), b"not base64 at all!!"],
    ids=["31-raw", "33-raw", "base64-of-16", "not-base64"],
)
def test_bad_kek_files_are_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "kek").write_bytes(content)
    with pytest.raises(KekError, match=f"holds {len(content)} bytes: neither 32 raw bytes"):
        load_kek_file(tmp_path / "kek")


def test_missing_kek_file(tmp_path: Path) -> None:
    with pytest.raises(KekError, match="cannot read KEK file"):
        load_kek_file(tmp_path / "absent")


def test_load_from_environment() -> None:
    key = os.urandom(32)
    env = {ENV_VAR: base64.b64encode(key).decode()}
    assert load_kek_env(environ=env).key == key
    assert load_kek(environ=env).key == key
    with pytest.raises(KekError, match=f"{ENV_VAR} is not set"):
        load_kek_env(environ={})
    with pytest.raises(KekError, match="decodes to 3 bytes"):
        load_kek_env(environ={ENV_VAR: "AAAA"})


def test_kek_never_shows_its_bytes() -> None:
    kek = Kek.generate()
    assert kek.to_base64() not in repr(kek)
    assert kek.kek_id in repr(kek)
    assert kek.kek_id.startswith("kek_")
    assert Kek(kek.key).kek_id == kek.kek_id != Kek.generate().kek_id
    with pytest.raises(KekError, match="exactly 32 bytes"):
        Kek(b"short")
