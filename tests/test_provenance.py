"""The provenance table: where and how each run trained, read from its record."""

from normexp import record
from normexp.analysis.provenance import provenance_table
from normexp.cli.analyze import main as analyze
from tests.test_analysis import BN, GN, write_run

START = {"device": "cpu", "cpu_capability": "AVX2", "torch_version": "2.14.1+cpu", "threads": 1}


def test_a_row_per_run_names_each_starts_commit_and_machine_and_a_total_sums_compute(tmp_path):
    resumed = write_run(tmp_path, BN, 2, 0, [50.0, 60.0])
    record.append_start(resumed, {**START, "git_commit": "8b0d7b25ec40"})
    record.append_start(resumed, {**START, "cpu_capability": "AVX512", "git_commit": "aa09eda12345"})
    older = write_run(tmp_path, GN, 2, 0, [50.0, 60.0])  # trained before starts were logged
    unfinished = write_run(tmp_path, GN, 32, 0, [50.0, 60.0], status="unfinished")

    table = provenance_table([unfinished, older, resumed]).set_index("run")

    row = table.loc[resumed.name]
    assert row["code commit"] == "8b0d7b2; aa09eda"
    assert row["machine"] == "cpu (AVX2), torch 2.14.1; cpu (AVX512), torch 2.14.1"
    assert (row["threads"], row["starts"], row["compute minutes"]) == ("1", "2", 1.0)
    assert table.loc[older.name, "starts"] == table.loc[older.name, "machine"] == "not recorded"
    assert table.loc[unfinished.name, "compute minutes"] != table.loc[unfinished.name, "compute minutes"]  # NaN
    assert list(table.index) == sorted([resumed.name, older.name, unfinished.name]) + ["total"]
    assert table.loc["total", "compute minutes"] == 2.0


def test_analyze_writes_the_provenance_table(tmp_path, capsys):
    for seed in range(2):
        for norm in (BN, GN):
            write_run(tmp_path, norm, 2, seed, [50.0, 60.0])
    analyze([str(tmp_path)])
    written = (tmp_path / "tables" / "provenance.md").read_text()
    header = [cell.strip() for cell in written.splitlines()[0].split("|")[1:-1]]
    assert header == ["run", "code commit", "machine", "threads", "starts", "compute minutes"]
    assert written.count("\n") == 2 + 4 + 1  # header, rule, four runs, total
