import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    from matplotlib import pyplot as plt

    plt.close("all")


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """The demo command on one seed with a small budget, run once per test session."""
    from qformer_budget.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--seeds", "0", "--examples", "48", "--epochs", "1"]) == 0
    return out
