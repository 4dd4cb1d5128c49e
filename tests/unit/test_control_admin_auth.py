"""The admin credential of `remora control` and where the client commands find it."""
from __future__ import annotations

import argparse
import os
import stat

import pytest

from remora.xds import admin_auth
from remora.xds.admin_auth import AdminCredential, AdminTokenError, check_token, read_token_file
from remora.xds.commands import admin_token, is_local

GOOD = "0123456789abcdef0123"


def test_created_token_file_is_private_random_and_stable(tmp_path):
    """First start creates <state-dir>/admin-token 0600 with an rma_ token; later starts reuse it."""
    first, created = AdminCredential.load_or_create(tmp_path / "state")
    path = tmp_path / "state" / "admin-token"
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert token.startswith("rma_") and len(token) == 4 + 43
    again, created_again = AdminCredential.load_or_create(tmp_path / "state")
    assert not created_again and path.read_text().strip() == token
    assert first.matches(token) and again.matches(token)
    assert not again.matches(token[:-1] + ("A" if token[-1] != "A" else "B"))


def test_two_state_dirs_get_different_tokens(tmp_path):
    """Each state directory gets its own random token."""
    AdminCredential.load_or_create(tmp_path / "a")
    AdminCredential.load_or_create(tmp_path / "b")
    assert (tmp_path / "a/admin-token").read_text() != (tmp_path / "b/admin-token").read_text()


def test_credential_keeps_only_a_hash(tmp_path):
    """The credential object holds the SHA-256 of the token, never the token itself."""
    credential = AdminCredential.from_token(GOOD)
    assert GOOD not in repr(credential) and GOOD.encode() not in credential.digest


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("  \n", "empty"),
    ("short", "5 characters, at least 16"),
    ("has a space in the middle!", "printable ASCII without spaces"),
    ("caf\u00e9" * 5, "printable ASCII"),
])
def test_unusable_tokens_are_refused_naming_the_source(text, message):
    """An empty, short or header-unsafe token is an error that names where it came from."""
    with pytest.raises(AdminTokenError, match=message) as error:
        check_token(text, "/etc/remora/admin/token")
    assert "/etc/remora/admin/token" in str(error.value)


def test_token_file_surrounding_whitespace_is_ignored(tmp_path):
    """A file written by `echo` (trailing newline) or a Secret holds the same token."""
    (tmp_path / "token").write_text(f"  {GOOD}\n")
    assert read_token_file(tmp_path / "token") == GOOD


def test_missing_operator_file_is_an_error(tmp_path):
    """--admin-token-file naming a missing file is refused (never silently replaced by a new token)."""
    with pytest.raises(AdminTokenError, match="no such file") as error:
        AdminCredential.from_file(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(error.value)


def test_rewritten_token_file_replaces_the_token(tmp_path, monkeypatch):
    """A rotated token file is picked up: the new token is accepted and the old one refused."""
    monkeypatch.setattr(admin_auth, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "token"
    path.write_text(GOOD)
    credential = AdminCredential.from_file(path)
    assert credential.matches(GOOD)
    new = "fedcba9876543210fedcba"
    path.write_text(new + "\n")
    os.utime(path, ns=(1, 1))   # a different mtime even on a coarse clock
    assert credential.matches(new) and not credential.matches(GOOD)


def test_emptied_token_file_keeps_the_token_in_force(tmp_path, monkeypatch):
    """A token file caught half-written (empty) does not lock the operator out or open the API."""
    monkeypatch.setattr(admin_auth, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "token"
    path.write_text(GOOD)
    credential = AdminCredential.from_file(path)
    path.write_text("")
    assert credential.matches(GOOD) and not credential.matches("")


def args(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"admin_token": None, "admin_token_file": None, "state_dir": None, **given})


def test_client_token_sources_in_order(tmp_path, monkeypatch):
    """--admin-token, then --admin-token-file, then $REMORA_ADMIN_TOKEN, then <--state-dir>/admin-token."""
    monkeypatch.delenv("REMORA_ADMIN_TOKEN", raising=False)
    url = "http://127.0.0.1:15010"
    (tmp_path / "file").write_text("from-the-file-0123456\n")
    (tmp_path / "admin-token").write_text("from-the-state-dir-0123\n")
    assert admin_token(args(), url) == (None, "")
    assert admin_token(args(state_dir=str(tmp_path)), url)[0] == "from-the-state-dir-0123"
    monkeypatch.setenv("REMORA_ADMIN_TOKEN", "from-the-environment-01")
    assert admin_token(args(state_dir=str(tmp_path)), url) == ("from-the-environment-01", "$REMORA_ADMIN_TOKEN")
    assert admin_token(args(admin_token_file=str(tmp_path / "file")), url)[0] == "from-the-file-0123456"
    assert admin_token(args(admin_token="from-the-flag-0123456"), url) == ("from-the-flag-0123456", "--admin-token")


def test_state_dir_token_is_never_sent_to_another_machine(tmp_path, monkeypatch):
    """--state-dir with a non-loopback --control is refused, so a local token never leaves the machine."""
    monkeypatch.delenv("REMORA_ADMIN_TOKEN", raising=False)
    (tmp_path / "admin-token").write_text(GOOD)
    with pytest.raises(AdminTokenError, match="not local"):
        admin_token(args(state_dir=str(tmp_path)), "http://control.remora-system:15010")
    assert admin_token(args(state_dir=str(tmp_path)), "http://localhost:15010")[0] == GOOD


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:15010", True), ("http://127.8.0.3:1", True), ("http://[::1]:15010", True),
    ("http://localhost:15010", True), ("http://10.0.0.5:15010", False), ("http://remora-control:15010", False),
])
def test_local_urls(url, local):
    """Loopback addresses and `localhost` are this machine; anything else is not."""
    assert is_local(url) is local
