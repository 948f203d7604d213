"""``mechunlearn report methods``: the docs' table from study runs, checked on two hand-built runs, and the table
committed in docs/methods.md checked to be one that the command writes."""

import json
import re
from pathlib import Path

import pytest

from mechunlearn.cli import main
from mechunlearn.report.doc_tables import BEGIN, END, OVERALL, methods_report, overall_verdict, write_into

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def _fake_run(out: Path, threads: int, verdicts: dict[str, str]) -> Path:
    folder = out / "tables" / "methods"
    folder.mkdir(parents=True)
    rows = ["model,role,verdict", "base,base,", "gold,gold,"]
    rows += [f"{model},unlearned,{verdict}" for model, verdict in verdicts.items()]
    (folder / "methods.csv").write_text("\n".join(rows) + "\n")
    (folder / "methods.md").write_text(f"| model | verdict |\n|---|---|\n| table of {out.name} | x |\n")
    environment = {"versions": {"torch": "2.13.0", "transformers": "4.57.0"}, "platform": "Linux-x",
                   "machine": "x86_64", "cpu_count": 2, "device": "cpu"}
    steps = [{"id": "tables/methods", "kind": "methods_table", "environment": None},
             {"id": "models/unlearned/ga/k/s0", "kind": "unlearned", "environment": {"torch_threads": threads}}]
    (out / "manifest.json").write_text(json.dumps({"study": "methods", "study_key": "abcdef0123456789",
                                                   "status": "done", "environment": environment,
                                                   "updated": "2026-12-07T19:00:00", "steps": steps}))
    (out / "study.resolved.json").write_text(json.dumps({"study": {"seeds": [0, 1, 2]},
                                                         "data": {"world": "default", "world_seed": 0}}))
    return out


def test_overall_verdict():
    assert overall_verdict(["meets", "meets"]) == OVERALL[0]
    assert overall_verdict(["meets", "meets on the mean"]) == OVERALL[1]
    assert overall_verdict(["misses", "meets"]) == OVERALL[1]
    assert overall_verdict(["misses", "misses"]) == OVERALL[2]


def test_report_from_two_runs(tmp_path):
    one = _fake_run(tmp_path / "t1", 1, {"ga": "meets", "npo": "meets", "dpo": "misses"})
    two = _fake_run(tmp_path / "t2", 2, {"ga": "meets", "npo": "meets on the mean", "dpo": "misses"})
    text = methods_report([one, two], command="CMD")
    assert "Written by `CMD`" in text
    assert "torch 2.13.0" in text and "1 torch thread(s)" in text and "2 torch thread(s)" in text
    assert "seeds [0, 1, 2]" in text
    assert "table of t1" in text and "table of t2" in text
    verdict_rows = {row[0]: row[1:] for row in _rows(text.split("#### Verdict across runs")[1])}
    assert verdict_rows == {"ga": ["meets", "meets", "meets with confidence"],
                            "npo": ["meets", "meets on the mean", "meets sometimes"],
                            "dpo": ["misses", "misses", "never"]}


def test_grid_rows_say_what_their_key_varies(tmp_path):
    run = _fake_run(tmp_path / "grid", 1, {})
    (run / "tables" / "methods" / "methods.csv").write_text(
        "model,role,method,config,verdict\nbase,base,,,\ngold,gold,,,\nnpo,unlearned,npo,,meets\n"
        "rmu-bb,unlearned,rmu,epochs=16,meets on the mean\nrmu-aa,unlearned,rmu,epochs=8,misses\n")
    text = methods_report([run], command="CMD")
    listing = text.split("Grid configurations")[1]
    assert "* `rmu-aa`: epochs=8\n* `rmu-bb`: epochs=16" in listing and "`npo`" not in listing


def test_write_into_replaces_only_the_section(tmp_path):
    page = tmp_path / "methods.md"
    page.write_text(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    write_into(page, "new table\n")
    assert page.read_text() == f"intro\n{BEGIN}\nnew table\n{END}\noutro\n"
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no generated section"):
        write_into(tmp_path / "bare.md", "x")


def test_cli_refuses_an_unfinished_study(tmp_path, capsys):
    run = _fake_run(tmp_path / "t1", 1, {"ga": "meets"})
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    assert main(["report", "methods", str(run)]) == 2
    assert "not done" in capsys.readouterr().err


def _rows(markdown: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def test_committed_table_is_the_commands_output():
    content = DOCS.read_text()
    assert BEGIN in content and END in content, "docs/methods.md lost its generated section"
    section = content.split(BEGIN, 1)[1].split(END, 1)[0]
    assert re.search(r"Written by `mechunlearn report methods [^`]+`", section)
    assert re.search(r"torch \d+\.\d+", section) and "torch thread(s)" in section and "seeds [" in section
    runs = re.findall(r"^#### `([^`]+)` \(", section, flags=re.M)
    assert len(runs) >= 1, "the table comes from at least one study run"
    verdicts = _rows(section.split("#### Verdict across runs")[1])
    assert verdicts, "no verdict rows"
    for row in verdicts:
        assert len(row) == len(runs) + 2
        assert row[-1] in OVERALL and row[-1] == overall_verdict(row[1:-1])
    for run_section in section.split("#### Verdict across runs")[0].split("#### `")[1:]:
        table = _rows(run_section)
        assert {row[0] for row in table} >= {"base", "gold"}
        for row in table:  # mean [low, high] cells as the methods table writes them
            assert re.fullmatch(r"(n/a|-?\d\.\d{3}( \[-?\d\.\d{3}, -?\d\.\d{3}\])?)", row[3])


def test_robustness_report_into_its_own_section(tmp_path):
    from mechunlearn.report.doc_tables import markers, robustness_report

    tables = tmp_path / "study" / "tables" / "robustness"
    tables.mkdir(parents=True)
    (tables / "robustness.md").write_text("| model | attack |\n|---|---|\n| npo | relearn |\n")
    (tmp_path / "study" / "manifest.json").write_text(json.dumps(
        {"study": "s", "study_key": "0123456789abcdef", "environment": {"versions": {"torch": "2.13.0"}},
         "updated": "t"}))
    text = robustness_report(tables, command="CMD")
    assert text.startswith("Written by `CMD`") and "torch 2.13.0" in text and "| npo | relearn |" in text
    begin, end = markers("robustness")
    page = tmp_path / "attacks.md"
    page.write_text(f"a\n{BEGIN}\nmethods\n{END}\n{begin}\nold\n{end}\nb\n")
    write_into(page, text, kind="robustness")
    assert page.read_text() == f"a\n{BEGIN}\nmethods\n{END}\n{begin}\n{text}{end}\nb\n"


def test_robustness_report_states_what_the_attacks_cost(tmp_path):
    from mechunlearn.report.doc_tables import attack_cost

    def step(attack, model, cpu, created, wall):
        record = {"id": f"attacks/{attack}/{model}", "kind": "attack", "model_id": model, "status": "ran",
                  "cpu_s": cpu, "environment": {"torch_threads": 1}}
        folder = tmp_path / record["id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "step.json").write_text(json.dumps({"created": created, "wall_s": wall}))
        return record

    # two workers: relearn/base and relearn/gold side by side from 10:00:00, gcg/base after the first: 3 min wall
    manifest = {"executor": "ray",
                "steps": [step("relearn", "base", 120.0, "2026-12-07T10:00:00", 120.0),
                          step("relearn", "gold", 60.0, "2026-12-07T10:00:00", 60.0),
                          step("gcg", "base", 30.0, "2026-12-07T10:02:00", 60.0),
                          {"id": "evals/base", "kind": "evals", "cpu_s": 999.0}]}
    assert attack_cost(manifest, tmp_path) == (
        "Cost: 3 attack steps on 2 models, 3.5 CPU-minutes in all (relearn 3.0, gcg 0.5); wall time from the first "
        "attack step's start to the last one's end: 3.0 min (executor ray), 1 torch thread(s) per step.")
    assert "wall time" not in attack_cost(manifest)                  # no step records to read
    (tmp_path / "attacks/gcg/base/step.json").write_text(json.dumps({"created": "2026-12-08T10:00:00", "wall_s": 60}))
    assert "wall time" not in attack_cost(manifest, tmp_path)        # computed in two runs a day apart
    assert attack_cost({"steps": []}) == ""


def test_study_report_for_the_readme(tmp_path):
    from mechunlearn.report.doc_tables import study_report

    out = tmp_path / "default"
    for folder in ("tables/methods", "tables/signature", "tables/robustness", "figures"):
        (out / folder).mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"study": "default", "study_key": "0123456789abcdef",
                                                   "status": "done", "environment": {}, "updated": "t"}))
    (out / "tables/methods/methods.md").write_text("prose\n\n| model | x |\n|---|---|\n| npo | 0.1 |\n")
    (out / "tables/signature/signature.md").write_text("prose\n\n| model | magnitude |\n|---|---|\n| npo | 0.2 |\n")
    (out / "tables/robustness/robustness.md").write_text(
        "| model | attack | v |\n|---|---|---|\n| npo | none | 1 |\n| npo | gcg | 2 |\n| npo | relearn | 3 |\n")
    (out / "figures/relearning_curves.png").write_bytes(b"\x89PNG fake")
    text = study_report(out, command="CMD", assets=tmp_path / "img", link_from=tmp_path)
    assert "Written by `CMD`" in text and "| npo | 0.1 |" in text and "| npo | 0.2 |" in text
    assert "| npo | none | 1 |" in text and "| npo | relearn | 3 |" in text and "gcg" not in text
    assert "prose" not in text and "![relearning curves](img/default_relearning_curves.png)" in text
    assert (tmp_path / "img" / "default_relearning_curves.png").read_bytes() == b"\x89PNG fake"
    (out / "manifest.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(ValueError, match="not a finished study"):
        study_report(out, command="CMD")


def test_committed_readme_study_section():
    from mechunlearn.report.doc_tables import markers

    readme = (DOCS.parents[1] / "README.md").read_text()
    begin, end = markers("study")
    section = readme.split(begin, 1)[1].split(end, 1)[0]
    assert re.search(r"Written by `mechunlearn report study [^`]+`", section)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section):
        assert (DOCS.parents[1] / image).is_file(), f"README shows {image}, which is not committed"
