"""Profiles in config.toml and secrets in the OS keyring, through the real CLI
against the DuoSTATION simulator. The keyring is a real (in-memory) backend
installed with keyring.set_keyring, not a mock of bulkmdm's code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from conftest import write_csv

from bulkmdm.config import config_dir
from bulkmdm.sim.duostation import FACTS

NO_CREDS = {"BULKMDM_USERNAME": None, "BULKMDM_PASSWORD": None}


class MemoryKeyring(KeyringBackend):
    """A keyring that keeps its secrets in a dict."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.secrets.pop((service, username), None)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    before = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(before)


@pytest.fixture
def no_keyring() -> Iterator[None]:
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(before)


def _config(tmp_path: Path, text: str) -> dict[str, str]:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "config.toml").write_text(text, encoding="utf-8")
    return {"BULKMDM_CONFIG_DIR": str(folder)}


def _lock_job(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "lock.csv", [["action", "serial"], ["lock", FACTS["untagged_device"]["serial"]]])


def test_profile_gives_provider_and_url(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    env = _config(tmp_path, f'[profiles.skolan]\nprovider = "duostation"\nurl = "{duo.url}"\nconcurrency = 2\n')
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env=env)
    assert res.exit_code == 0, res.output
    assert res.report[0]["status"] == "succeeded"
    assert duo.stats.mutating == 1


def test_flags_win_over_the_profile(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    env = _config(tmp_path, '[profiles.skolan]\nprovider = "duostation"\nurl = "http://127.0.0.1:1"\n')
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan", "--url", duo.url], env=env)
    assert res.exit_code == 0, res.output
    assert duo.stats.mutating == 1


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            'provider = "duostation"\nurl = "http://x"\nurll = "http://y"\n',
            ["line 4", "'urll' is not a profile setting"],
        ),
        ('provider = "duostation"\nconcurrency = "eight"\n', ["line 3", "concurrency must be a whole number"]),
        ('provider = "airwatch"\n', ["line 2", "'airwatch' is not one bulkmdm knows"]),
        ('provider = "duostation"\nurl = "mdm.example.com"\n', ["line 3", "must start with https://"]),
        ('provider = "duostation"\nrate = "fast"\n', ["line 3", "is not a rate"]),
        ('provider = "duostation"\npassword = "hunter2"\n', ["line 3", "bulkmdm login --profile skolan"]),
        ('provider = "duostation"\ntoken = "abc"\n', ["line 3", "secrets are never read"]),
    ],
)
def test_a_profile_with_a_mistake_is_one_sentence_with_file_and_line(
    run_cli: Any, tmp_path: Path, body: str, words: list[str]
) -> None:
    env = _config(tmp_path, "[profiles.skolan]\n" + body)
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env=env)
    assert res.exit_code == 2, res.output
    assert "config.toml" in res.output and "Traceback" not in res.output
    for word in words:
        assert word in res.output
    assert "hunter2" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_invalid_toml_names_the_line(run_cli: Any, tmp_path: Path) -> None:
    env = _config(tmp_path, "[profiles.skolan]\nprovider = duostation\n")
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env=env)
    assert res.exit_code == 2 and "line 2" in res.output and "not valid TOML" in res.output


def test_missing_provider_or_url_or_profile(run_cli: Any, tmp_path: Path) -> None:
    job = str(_lock_job(tmp_path))
    res = run_cli(["run", job])
    assert res.exit_code == 2 and "Give --provider and --url" in res.output and "--profile" in res.output
    res = run_cli(["run", job, "--profile", "skolan"], env={"BULKMDM_CONFIG_DIR": str(tmp_path / "nowhere")})
    assert res.exit_code == 2 and "config.toml does not exist; create it with a [profiles.skolan]" in res.output
    env = _config(tmp_path, '[profiles.skolan]\nprovider = "duostation"\n')
    res = run_cli(["run", job, "--profile", "skolan"], env=env)
    assert res.exit_code == 2 and "Give --url (profile 'skolan' does not set it either)" in res.output
    res = run_cli(["run", job, "--profile", "other"], env=env)
    assert res.exit_code == 2 and "no profile 'other'" in res.output and "skolan" in res.output


def test_xdg_config_home_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    import sys

    if sys.platform.startswith("linux"):
        assert config_dir({}) == tmp_path / "xdg" / "bulkmdm"
    assert config_dir({"BULKMDM_CONFIG_DIR": str(tmp_path / "o")}) == tmp_path / "o"


def test_login_then_run_reads_the_keyring(
    duo: Any, run_cli: Any, tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    env = _config(tmp_path, f'[profiles.skolan]\nprovider = "duostation"\nurl = "{duo.url}"\n')
    before = (tmp_path / "config" / "config.toml").read_text()
    res = run_cli(["login", "--profile", "skolan"], env={**env, **NO_CREDS}, input="admin\nadmin\n")
    assert res.exit_code == 0, res.output
    assert memory_keyring.secrets == {
        ("bulkmdm", "skolan:BULKMDM_USERNAME"): "admin",
        ("bulkmdm", "skolan:BULKMDM_PASSWORD"): "admin",
    }
    assert (tmp_path / "config" / "config.toml").read_text() == before
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env={**env, **NO_CREDS})
    assert res.exit_code == 0, res.output
    assert duo.stats.mutating == 1
    for path in [res.report_path, *(tmp_path / "state").rglob("*")]:
        if path.is_file():
            assert b"admin" not in path.read_bytes().replace(b"BULKMDM_USERNAME", b"")


def test_the_environment_wins_over_the_keyring(
    duo: Any, run_cli: Any, tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    env = _config(tmp_path, f'[profiles.skolan]\nprovider = "duostation"\nurl = "{duo.url}"\n')
    memory_keyring.set_password("bulkmdm", "skolan:BULKMDM_USERNAME", "admin")
    memory_keyring.set_password("bulkmdm", "skolan:BULKMDM_PASSWORD", "wrong")
    job = str(_lock_job(tmp_path))
    res = run_cli(["run", job, "--profile", "skolan"], env={**env, **NO_CREDS})
    assert res.exit_code == 2, res.output  # the keyring's wrong password was used
    assert duo.stats.mutating == 0
    res = run_cli(["run", job, "--profile", "skolan"], env=env)  # conftest's CREDS are right
    assert res.exit_code == 0, res.output
    assert duo.stats.mutating == 1


def test_nothing_in_the_keyring_says_how_to_log_in(run_cli: Any, tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    env = _config(tmp_path, '[profiles.skolan]\nprovider = "duostation"\nurl = "http://127.0.0.1:1"\n')
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env={**env, **NO_CREDS})
    assert res.exit_code == 2
    assert "BULKMDM_USERNAME and BULKMDM_PASSWORD" in res.output
    assert "bulkmdm login --profile skolan" in res.output


def test_manageengine_login_asks_which_credentials(run_cli: Any, tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    env = _config(tmp_path, '[profiles.me]\nprovider = "manageengine"\nurl = "https://mdm.example.com"\n')
    res = run_cli(["login", "--profile", "me"], env=env, input="2\ncid\ncsecret\nrtoken\n")
    assert res.exit_code == 0, res.output
    assert memory_keyring.secrets[("bulkmdm", "me:BULKMDM_REFRESH_TOKEN")] == "rtoken"
    assert "csecret" not in res.output and "rtoken" not in res.output  # typed without echo


def test_no_keyring_backend_points_to_the_environment(run_cli: Any, tmp_path: Path, no_keyring: None) -> None:
    env = _config(tmp_path, '[profiles.skolan]\nprovider = "duostation"\nurl = "http://127.0.0.1:1"\n')
    res = run_cli(["login", "--profile", "skolan"], env=env, input="admin\nadmin\n")
    assert res.exit_code == 2
    assert "keyring cannot be used" in res.output and "BULKMDM_USERNAME and BULKMDM_PASSWORD" in res.output
    assert "BULKMDM_USERNAME:" not in res.output  # refused before asking
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env={**env, **NO_CREDS})
    assert res.exit_code == 2 and "keyring cannot be used" in res.output


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[defaults]\nrate = "5/s"\n', ["(line 1)", "'defaults' is not a setting"]),
        ('# mine\n\n[profiles."skolan"]\nprovider = "duostation"\n"url" = 5\n', ["(line 5)", "url must be text"]),
        (
            '[profiles.skolan]\nprovider = "duostation"\n\n[profiles.other]\nconcurrency = 0\n',
            ["(line 5)", "concurrency must be a whole number"],
        ),
    ],
)
def test_line_numbers_in_other_shapes(run_cli: Any, tmp_path: Path, text: str, words: list[str]) -> None:
    env = _config(tmp_path, text)
    profile = "other" if "profiles.other" in text else "skolan"
    res = run_cli(["run", str(_lock_job(tmp_path)), "--profile", profile], env=env)
    assert res.exit_code == 2
    for word in words:
        assert word in res.output, res.output


def test_a_mistake_in_another_profile_does_not_block_this_one(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    env = _config(
        tmp_path,
        f'[profiles.skolan]\nprovider = "duostation"\nurl = "{duo.url}"\n\n[profiles.broken]\nprovider = "nope"\n',
    )
    assert run_cli(["run", str(_lock_job(tmp_path)), "--profile", "skolan"], env=env).exit_code == 0
