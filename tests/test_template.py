"""`bulkmdm template ACTION`: write, fill in, run against the simulator; the
Notes sheet is ignored when it is read back; dropdowns from given choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openpyxl
import xlsxwriter

from bulkmdm.actions import ACTIONS
from bulkmdm.jobfile import read_job
from bulkmdm.sim.duostation import FACTS
from bulkmdm.template import add_choices, write_template


def test_template_fill_run(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "tag.xlsx"
    made = run_cli(["template", "tag", "--provider", "duostation", "-o", str(path)])
    assert made.exit_code == 0, made.output
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Job", "Notes"]
    job, notes = book.worksheets
    assert [c.value for c in job[1]] == ["serial", "tag"]
    assert job.freeze_panes == "A2"
    assert job.column_dimensions["A"].number_format == "@"  # Excel keeps typed leading zeros
    notes_text = " ".join(str(c) for row in notes.iter_rows(values_only=True) for c in row if c)
    assert "--action tag --provider duostation" in notes_text
    assert "device_id" in notes_text and "Elev-iPad" in notes_text  # the alternative and an example
    job.append([FACTS["untagged_device"]["serial"], FACTS["tagged_device"]["tag"]])
    job.append([FACTS["leading_zero_serial"], FACTS["tagged_device"]["tag"]])
    book.save(path)
    assert len(read_job(path).rows) == 2  # the Notes sheet is not read as rows
    res = run_cli(["run", str(path), "--provider", "duostation", "--url", duo.url, "--action", "tag"])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in res.report] == ["succeeded", "succeeded"]
    assert duo.stats.mutating == 2


def test_csv_template_and_refusals(run_cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "assign.csv"
    assert run_cli(["template", "Assign User", "-o", str(path)]).exit_code == 0
    assert path.read_bytes() == b"\xef\xbb\xbfserial,user\r\n"
    again = run_cli(["template", "assign-user", "-o", str(path)])
    assert again.exit_code == 2 and "exists already" in again.output
    cannot = run_cli(["template", "wipe", "--provider", "banyan", "-o", str(tmp_path / "w.xlsx")])
    assert cannot.exit_code == 2 and "banyan cannot wipe" in cannot.output
    unknown = run_cli(["template", "frobnicate", "-o", str(tmp_path / "f.xlsx")])
    assert unknown.exit_code == 2 and "bulkmdm actions" in unknown.output


def test_default_name_is_the_action(run_cli: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    res = run_cli(["template", "delete-user"])
    assert res.exit_code == 0 and (tmp_path / "delete-user.xlsx").exists()
    notes = openpyxl.load_workbook(tmp_path / "delete-user.xlsx")["Notes"]
    assert any("destructive" in str(c) for row in notes.iter_rows(values_only=True) for c in row if c)


def test_choices_become_dropdowns(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    write_template(path, ACTIONS["tag"], choices={"tag": ["Elev-iPad", "Lärare", "Elev-iPad"]})
    sheet = openpyxl.load_workbook(path)["Job"]
    (rule,) = sheet.data_validations.dataValidation
    assert rule.type == "list" and rule.formula1 == '"Elev-iPad,Lärare"' and str(rule.sqref) == "B2:B5001"
    assert rule.errorStyle == "warning"

    long = [f"Grupp {n}, Norra skolan" for n in range(300)]  # commas and > 255 characters: a Lists sheet
    path = tmp_path / "g.xlsx"
    book = xlsxwriter.Workbook(str(path))
    job = book.add_worksheet("Job")
    job.write_row(0, 0, ["serial", "group", "app"])
    add_choices(book, job, ["serial", "group", "app"], {"group": long, "app": ["Kahoot!"], "nope": ["x"]}, rows=100)
    book.close()
    loaded = openpyxl.load_workbook(path)
    assert loaded.sheetnames == ["Job", "Lists"] and loaded["Lists"].sheet_state == "hidden"
    rules = {str(r.sqref): r.formula1 for r in loaded["Job"].data_validations.dataValidation}
    assert rules == {"B2:B101": "Lists!$B$2:$B$301", "C2:C101": '"Kahoot!"'}
    assert loaded["Lists"]["B301"].value == "Grupp 299, Norra skolan"
    assert read_job(path).headers == ("serial", "group", "app")  # the job is still the first sheet


def test_profile_names_the_provider(run_cli: Any, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[profiles.b]\nprovider = "banyan"\nurl = "https://api.example.com"\n')
    env = {"BULKMDM_CONFIG_DIR": str(tmp_path)}
    res = run_cli(["template", "wipe", "--profile", "b", "-o", str(tmp_path / "w.xlsx")], env=env)
    assert res.exit_code == 2 and "banyan cannot wipe" in res.output
    res = run_cli(["template", "ban", "--profile", "b", "-o", str(tmp_path / "b.xlsx")], env=env)
    assert res.exit_code == 0 and "--provider banyan" in " ".join(
        str(c)
        for row in openpyxl.load_workbook(tmp_path / "b.xlsx")["Notes"].iter_rows(values_only=True)
        for c in row
        if c
    )


def test_template_with_url_offers_the_mdms_tags(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    import openpyxl

    out = tmp_path / "tags.xlsx"
    res = run_cli(["template", "tag", "--provider", "duostation", "--url", duo.url, "-o", str(out)])
    assert res.exit_code == 0, res.output
    tags = duo.call(lambda: sorted(t["name"] for t in duo.app["state"].tags.values()))
    book = openpyxl.load_workbook(out)
    rules = {str(r.sqref): r.formula1 for r in book["Job"].data_validations.dataValidation}
    (formula,) = rules.values()
    if formula.startswith("Lists!"):
        cells = book["Lists"][formula.removeprefix("Lists!").replace("$", "")]
        offered = [row[0].value for row in cells if row[0].value]
    else:
        offered = formula.strip('"').split(",")
    assert offered and set(offered) <= set(tags)
    # no dropdowns without credentials, but still a template, and one sentence why
    res = run_cli(
        ["template", "tag", "--provider", "duostation", "--url", duo.url, "-o", str(tmp_path / "b.xlsx")],
        env={"BULKMDM_USERNAME": "", "BULKMDM_PASSWORD": ""},
    )
    assert res.exit_code == 0 and "No dropdowns:" in res.output and (tmp_path / "b.xlsx").exists()
