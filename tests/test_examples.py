"""Every job the README names is in jobs/, the user-tag example runs clean
against the simulator `bulkmdm sim duostation` serves (3000 devices, seed 1),
and the README's "Try it on a simulator" runs as shown."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import read_report

from bulkmdm.cli import main
from bulkmdm.engine import default_report_path
from bulkmdm.sim.common import SimServer

ROOT = Path(__file__).parent.parent


def test_every_job_the_readme_names_exists() -> None:
    named = set(re.findall(r"jobs/[\w.-]+\.(?:csv|xlsx)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert named, "the README names no example job"
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"named in README.md but not in jobs/: {missing}"


def test_gitignore_covers_the_demo_folder() -> None:
    assert "bulkmdm-demo/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.fixture
def demo_duo() -> Iterator[SimServer]:
    from bulkmdm.sim.duostation import make_app

    with SimServer(make_app(devices=3000, seed=1)) as server:  # what `bulkmdm sim duostation` serves
        yield server


def test_tag_user_example_runs_clean(demo_duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = shutil.copy(ROOT / "jobs" / "duostation-tag-user.csv", tmp_path / "tag-user.csv")
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", demo_duo.url, "--action", "tag-user"])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in res.report] == ["succeeded"] * 12 + ["skipped"]
    state = demo_duo.app["state"]
    for row in res.report[:12]:
        (user,) = demo_duo.call(lambda email=row["email"]: state.search_users(email=email))
        assert "Lärare" in demo_duo.call(lambda user_id=user["id"]: state.user_tags_of(user_id))


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 3)
    return text[start : end if end >= 0 else None]


def _shell_lines(section: str) -> list[str]:
    """The command lines of the section's ```sh blocks, comments dropped, in order."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


@contextlib.contextmanager
def _simulator(name: str) -> Iterator[str]:
    """`bulkmdm sim NAME` as the README starts it, on a free port: its URL."""
    args = [sys.executable, "-m", "bulkmdm", "sim", name, "--port", "0"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else url
            yield url
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


def test_try_it_on_a_simulator_runs_as_shown(tmp_path: Path, monkeypatch: Any) -> None:
    """Every command of the README's walk-through, in order, against the simulators it starts
    (on free ports instead of the README's): each run exits 0, no row failed or invalid,
    and every file in jobs/ is run."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    ports: dict[str, str] = {}
    ran: set[str] = set()
    with contextlib.ExitStack() as servers:
        for line in _shell_lines(_section("Try it on a simulator")):
            words = shlex.split(line)
            if words[:2] == ["bulkmdm", "sim"]:
                url = servers.enter_context(_simulator(words[2]))
                ports[words[words.index("--port") + 1]] = url.rsplit(":", 1)[1]
            elif words[0] == "export":
                env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
            else:
                assert words[:2] == ["bulkmdm", "run"], f"a command the test does not know: {line}"
                words = [re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[m[1]]}", w) for w in words]
                result = CliRunner().invoke(main, words[1:], env=env, catch_exceptions=False)
                assert result.exit_code == 0, f"{line}\n{result.output}"
                report = default_report_path(Path(words[2]), dry_run="--dry-run" in words)
                statuses = {row["status"] for row in read_report(report)}
                assert statuses <= {"planned", "skipped", "succeeded"}, f"{line}: {statuses}"
                ran.add(Path(words[2]).name)
    assert ran == {path.name for path in (ROOT / "jobs").iterdir()}
