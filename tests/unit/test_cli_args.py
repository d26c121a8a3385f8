"""The command line refuses what it cannot run, before it reaches any server. No servers: every
case here stops at the arguments or the settings (no database URL, no Vault address)."""

from __future__ import annotations

import pytest

from context_encryption import cli

#: The environment the tool reads settings from; cleared so nothing points at a server.
SETTINGS_ENV = (
    "DATABASE_URL",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
    "VAULT_TRANSIT_MOUNT",
    "VAULT_OLD_KEY",
    "VAULT_NEW_KEY",
    "ENCRYPTION_HMAC_SECRET",
)


@pytest.fixture(autouse=True)
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "the following arguments are required: command"),
        (("check",), "invalid choice: 'check'"),
        (("verify", "--sample", "x"), "argument --sample: invalid int value: 'x'"),
        (("verify", "--max-ids", "many"), "argument --max-ids: invalid int value: 'many'"),
        (("preflight", "--direction", "sideways"), "argument --direction: invalid choice"),
        (("verify", "--dry-run"), "unrecognized arguments: --dry-run"),
    ],
)
def test_argparse_refuses_with_usage_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "usage: context-encryption" in err
    assert message in err


def test_sample_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", "--sample", "0")
    assert (code, out) == (cli.EXIT_ERROR, "")
    assert err == "context-encryption: --sample must be at least 1\n"


@pytest.mark.parametrize("value", ["0", "-1", "v2", "newest", ""])
def test_to_version_is_latest_or_a_positive_version(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, out, err = run(capsys, "rewrap", "--to-version", value)
    assert (code, out) == (cli.EXIT_ERROR, "")
    assert err == (
        f"context-encryption: --to-version {value!r}: give 'latest' or a key version (1, 2, ...)\n"
    )


def test_a_setting_that_does_not_parse_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "verify", "--tables", "userz")
    assert code == cli.EXIT_ERROR
    assert err.startswith("context-encryption: ")
    assert "--tables" in err
    assert "unknown table(s) userz" in err
    code, _out, err = run(capsys, "verify", "--batch-size", "lots")
    assert code == cli.EXIT_ERROR
    assert "--batch-size" in err


@pytest.mark.parametrize(
    "argv", [("rewrap",), ("rewrap", "--to-version", "2"), ("preflight", "--direction", "rewrap")]
)
def test_rewrap_without_a_database_url(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (cli.EXIT_ERROR, "")
    assert err == "context-encryption: no database URL: set DATABASE_URL (or --db ...)\n"


def test_verify_without_database_or_vault_says_both(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify")
    assert (code, out) == (cli.EXIT_ERROR, "")
    assert err.startswith("context-encryption: cannot verify")
    assert "no database URL" in err and "set DATABASE_URL (or --db ...)" in err
    assert "no Vault address or token" in err and "set VAULT_ADDR and VAULT_TOKEN" in err
