"""Settings refused at load: weak static API tokens (security.md, section 5)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.settings import Settings, token_weakness

WEAK = [
    "0000000000000000",  # one character repeated
    "changeme-please-1234",  # a placeholder word with padding
    "Ch4ngeMe-Ch4ngeMe-2026",  # the same, with digits for letters
    "my-p4ssw0rd-is-very-long",
    "SuperSecret-2026-prod",
    "api-token-for-the-reporter",
    "admin-12345678901234",
    "0123456789abcdefghij",  # sequences
    "abababababababababab",  # a repeated pattern
    "Xy7!Xy7!Xy7!Xy7!Xy7!",
    "aaaaaaaaaaaaaaab1234",
    "short-R4nd0m",  # under 16 characters
]


@pytest.mark.parametrize("token", WEAK)
def test_weak_api_tokens_are_refused_without_echoing_them(token: str) -> None:
    strong = secrets.token_hex(32)
    with pytest.raises(ValidationError) as refused:
        Settings(api_tokens=f"{strong},{token}")  # type: ignore[arg-type]
    message = str(refused.value)
    assert "NODULEFLOW_API_TOKENS: token 2 of 2 is refused" in message
    assert "openssl rand -hex 32" in message
    assert token not in message and strong not in message  # secrets never echoed


@pytest.mark.parametrize(
    "make",
    [
        lambda: secrets.token_hex(32),  # what the docs recommend
        lambda: secrets.token_urlsafe(24),
        lambda: "Zq8-vT3kLw9#rB2mXc",  # mixed, no words
    ],
)
def test_random_tokens_are_accepted(make: object) -> None:
    for _ in range(200):
        token = make()  # type: ignore[operator]
        assert Settings(api_tokens=[token]).api_tokens == [token]


def test_short_random_tokens_are_accepted_almost_always() -> None:
    """16 hexadecimal characters, the shortest length accepted: the strength estimate counts
    runs (``876``, ``999``) once, so about 1 in 1 000 random ones reads as too predictable
    and is refused with that reason (generate another); never more often than 1 in 200."""
    tokens = [secrets.token_hex(8) for _ in range(2000)]
    reasons = [token_weakness(token) for token in tokens]
    refused = [reason for reason in reasons if reason is not None]
    assert len(refused) <= 10
    assert all(reason.startswith("too predictable") for reason in refused)


def test_the_command_refuses_a_weak_token_with_one_clear_line(tmp_path: Path) -> None:
    """At start-up: one line naming the setting and the reason, no traceback, no token."""
    token = "changeme-please-1234"
    env = {**os.environ, "NODULEFLOW_API_TOKENS": token}
    env["NODULEFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'nf.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "reporter"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and token not in result.stderr + result.stdout
    assert "NODULEFLOW_API_TOKENS" in result.stderr and "'changeme'" in result.stderr
