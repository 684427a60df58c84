"""Every job the README names is in jobs/, and the user-tag example runs clean
against the simulator `bulkmdm sim duostation` serves (3000 devices, seed 1)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
