import pytest

from qformer_budget.cli import main
from qformer_budget.runner.config import ConfigError


def test_params_prints_the_papers_counts(capsys):
    assert main(["params", "--presets", "instructblip-flan-t5-xl", "--ranks", "1", "8"]) == 0
    table = capsys.readouterr().out
    paper_all = [line for line in table.splitlines() if "| paper_all " in line]
    assert [" 265,728 " in paper_all[0], " 2,125,824 " in paper_all[1]] == [True, True]


def test_run_refuses_a_bad_config_in_one_line_and_shows_the_traceback_with_debug(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\nout = "x"\nbenchmarks = ["iconqa"]\n[[methods]]\nname = "adalora"\nrankk = 3\n')
    assert main(["run", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("qformer-budget run: bad.toml [[methods]][0]: unknown key(s) ['rankk']; known keys: ")
    assert error.count("\n") == 1
    with pytest.raises(ConfigError, match=r"bad.toml \[\[methods\]\]\[0\]: unknown key\(s\) \['rankk'\]"):
        main(["--debug", "run", str(config)])


@pytest.mark.parametrize("argv, message", [
    (["run", "{tmp}/missing.toml"], "missing.toml"),
    (["figures", "{tmp}/no-runs"], "no-runs"),
    (["status", "{tmp}/no-sweep"], "no-sweep"),
])
def test_path_errors_are_one_line_naming_the_path(tmp_path, capsys, argv, message):
    assert main([part.format(tmp=tmp_path) for part in argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and "Traceback" not in error


def test_params_counts_the_tiny_preset_and_the_demos_all_linear_placement(capsys):
    assert main(["params", "--presets", "tiny", "--ranks", "12"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny ")]
    all_linear = [row for row in rows if "| all_linear " in row]
    assert len(all_linear) == 1 and "|     120 |" in all_linear[0]  # every Q-Former Linear of the tiny model
