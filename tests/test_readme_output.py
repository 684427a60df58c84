"""The README's sample output is what a real run prints: the same lines, in the same
order, with the same counts; only the time a run takes may differ."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from bulkmdm.cli import main
from bulkmdm.demo import _fleets, write_jobs
from bulkmdm.sim.common import SimServer

README = Path(__file__).parent.parent / "README.md"
SAMPLE_URL = "https://mdm.school.se"
_PROGRESS = re.compile(r"^\d+/\d+ rows \(.*\); [\d.]+ rows/s, ETA [\d:-]+$")
_ELAPSED = re.compile(r" in [\d.]+ s\.$")


def _shape(lines: list[str]) -> list[str]:
    """Lines with what depends on the machine's speed left out: a progress line's
    figures (and how many there are, one every few seconds) and the seconds taken."""
    shaped: list[str] = []
    for line in lines:
        line = "<progress>" if _PROGRESS.match(line) else _ELAPSED.sub(" in <seconds> s.", line)
        if not (line == "<progress>" and shaped and shaped[-1] == line):
            shaped.append(line)
    return shaped


def test_what_a_run_looks_like_is_a_real_run(tmp_path: Path, monkeypatch: Any) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## What a run looks like") :]
    command_block, output_block = re.findall(r"```(?:sh)?\n(.*?)```", section, flags=re.S)[:2]
    (command,) = [line for line in command_block.splitlines() if line.startswith("bulkmdm run")]
    duo, *others = _fleets()
    write_jobs(tmp_path, duo["state"], *(app["state"] for app in others), mistakes=True)
    (tmp_path / "duostation-tag.csv").rename(tmp_path / "tags.csv")
    monkeypatch.chdir(tmp_path)
    with SimServer(duo) as sim:
        args = [word.replace(SAMPLE_URL, sim.url) for word in shlex.split(command)[1:]]
        result = CliRunner().invoke(
            main, args, env={"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"}, catch_exceptions=False
        )
    assert result.exit_code == 1, result.output
    printed = (result.stderr + result.stdout).replace(sim.url, SAMPLE_URL).splitlines()
    assert any(_PROGRESS.match(line) for line in printed), "the run was too quick to print a progress line"
    assert _shape(printed) == _shape(output_block.splitlines())
