import pytest

from qformer_budget.cli import main
from qformer_budget.runner.config import ConfigError


def test_params_prints_the_papers_counts(capsys):
    assert main(["params", "--presets", "instructblip-flan-t5-xl", "--ranks", "1", "8"]) == 0
    table = capsys.readouterr().out
    paper_all = [line for line in table.splitlines() if "| paper_all " in line]
    assert [" 265,728 " in paper_all[0], " 2,125,824 " in paper_all[1]] == [True, True]


def test_run_refuses_a_bad_config_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\nout = "x"\nbenchmarks = ["iconqa"]\n[[methods]]\nname = "adalora"\nrankk = 3\n')
    with pytest.raises(ConfigError, match=r"bad.toml \[\[methods\]\]\[0\]: unknown key\(s\) \['rankk'\]"):
        main(["run", str(config)])
