"""Bad input never crashes the run: file-level errors are one sentence (exit
2), row-level problems are `invalid` rows, and the good rows still run."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from bulkmdm.sim.duostation import FACTS


def _run(run_cli: Any, duo: Any, job: Path, *extra: str) -> Any:
    return run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, *extra])


def test_a_large_job_with_one_broken_row_deep_inside(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """30,000 rows: the broken one lies past the part of the file read to
    detect its encoding and delimiter (64 KiB) and past the first two chunks
    the run plans (1,000 rows, then 10,000)."""
    st = duo.app["state"]
    serials = duo.call(
        lambda: [
            d["serialNumber"]
            for d in list(st.devices.values())[FACTS["edge_devices"] :]
            if len(st.devices_by_serial(d["serialNumber"])) == 1
        ][:50]
    )
    lines = ["serial,tag,note"]
    for i in range(30_000):
        lines.append(f"{serials[i % 50]},Musik,row {i}")
    lines[15_001] = f"{serials[0]},Musik,broken,extra,cells"
    job = tmp_path / "big.csv"
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = _run(run_cli, duo, job, "--action", "tag", "--rate", "none", "--concurrency", "16")
    statuses = [r["status"] for r in res.report]
    assert len(statuses) == 30_000
    assert statuses[15_000] == "invalid"
    assert "line 15002" in res.report[15_000]["detail"]
    assert statuses.count("invalid") == 1
    # each device needed the tag once; every repeat is skipped and not sent again
    assert duo.stats.mutating == statuses.count("succeeded") <= 50
    assert statuses.count("failed") == 0


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.csv", b"", "empty"),
        ("fake.xlsx", b"serial,action\nA,lock\n", "xlsx"),
        ("fake.csv", b"PK\x03\x04" + b"\x00" * 100, "csv"),
        ("job.pdf", b"%PDF-1.4", ".pdf"),
    ],
)
def test_file_level_errors(duo: Any, run_cli: Any, tmp_path: Path, name: str, content: bytes, words: str) -> None:
    job = tmp_path / name
    job.write_bytes(content)
    res = _run(run_cli, duo, job, "--action", "lock")
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert duo.stats.requests == 0


def test_nul_bytes_and_invalid_utf8_rows(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    good = FACTS["untagged_device"]["serial"]
    job = tmp_path / "mess.csv"
    job.write_bytes(b"serial,message\n" + good.encode() + b",Hej \xe5\xe4\xf6\nBAD\x00SERIAL,hej\n")
    res = _run(run_cli, duo, job, "--action", "message")
    assert [r["status"] for r in res.report] == ["succeeded", "invalid"]
    assert res.report[0]["message"] == "Hej åäö"  # Windows-1252 read as such
    assert "NUL" in res.report[1]["detail"]


def test_xlsx_with_formulas_merged_cells_and_duplicate_headers(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Serial", "serial", "Message", "Count"])
    # two columns of one meaning must agree (CONTRACT; a disagreeing row is invalid: test_columns.py)
    ws.append([FACTS["untagged_device"]["serial"], FACTS["untagged_device"]["serial"], "Hej", "=1+1"])
    ws.append(["", "", "merged", ""])
    ws.merge_cells("A2:A3")
    path = tmp_path / "f.xlsx"
    wb.save(path)
    res = _run(run_cli, duo, path, "--action", "message")
    assert [r["status"] for r in res.report] == ["succeeded", "invalid"]
    assert "serial" in res.report[1]["detail"]


def test_huge_cell_is_an_invalid_row(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = tmp_path / "huge.csv"
    job.write_text(
        f"serial,message\n{FACTS['untagged_device']['serial']},{'x' * 40_000}\n"
        f"{FACTS['untagged_device']['serial']},ok\n",
        encoding="utf-8",
    )
    res = _run(run_cli, duo, job, "--action", "message")
    assert [r["status"] for r in res.report] == ["invalid", "succeeded"]


def test_corrupt_zip_named_xlsx(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "broken.xlsx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "not a workbook")
    res = _run(run_cli, duo, path, "--action", "lock")
    assert res.exit_code == 2 and "Traceback" not in res.output
