"""The interactive explorer: its data (pure), its plotly views, the offline report, and the report in a real browser."""

import html
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qformer_budget.analysis import load_runs
from qformer_budget.benchmarks.synthetic_records import write_synthetic_runs
from qformer_budget.cli import main
from qformer_budget.core.grammar import BLOCK_PROJS, BLOCKS
from qformer_budget.plotting import explore
from qformer_budget.plotting.explorer import write_report
from qformer_budget.plotting.explorer_data import HEATMAP_STEPS, allocation_cells, thin_steps

COLUMNS = [f"{block}.{proj}" for block in BLOCKS for proj in BLOCK_PROJS[block]]
BENCHMARKS = ("iconqa", "vizwiz")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    # 3 seeds (means that are not exact in binary) and 51 recorded steps (more than the slider's 40).
    write_synthetic_runs(root, BENCHMARKS, seeds=3, total_step=250, record_every=5, deltaT=5)
    return root


@pytest.fixture(scope="module")
def records(runs) -> pd.DataFrame:
    return load_runs(runs)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    return write_report(runs, tmp_path_factory.mktemp("report") / "report.html", n_boot=200)


def drawn(ranks: np.ndarray) -> np.ndarray:
    """Mean ranks as the heatmap colours them: to 0.001, which keeps a study's page small."""
    return np.round(ranks, 3)


def mean_ranks(records: pd.DataFrame, benchmark: str, step: int) -> np.ndarray:
    """The expected heatmap at ``step``: each module's rank averaged over seeds, layer x sublayer, NaN: no module."""
    rows = records[(records["benchmark"] == benchmark) & (records["step"] == step)]
    table = rows.assign(column=rows["block"] + "." + rows["proj"]).pivot_table(
        index="layer", columns="column", values="rank", aggfunc="mean"
    )
    return table.reindex(index=range(12), columns=COLUMNS).to_numpy(dtype=float)


# --- data ---


def test_thin_steps_keeps_first_and_last_evenly_and_refuses_fewer_than_two():
    assert thin_steps([5, 1, 3, 3], 10).tolist() == [1, 3, 5]
    thinned = thin_steps(np.arange(1, 1001), 40)
    assert len(thinned) == 40 and thinned[0] == 1 and thinned[-1] == 1000
    assert np.ptp(np.diff(thinned)) <= 1  # evenly spaced
    with pytest.raises(ValueError, match="max_steps must be at least 2"):
        thin_steps([1, 2, 3], 1)


def test_allocation_cells_average_seeds_and_carry_budget_threshold_and_structure(records):
    cells = allocation_cells(records, max_steps=6)
    assert cells.groupby("benchmark")["step"].nunique().tolist() == [6, 6]
    last = cells[(cells["benchmark"] == "vizwiz") & (cells["step"] == cells["step"].max())]
    expected = mean_ranks(records, "vizwiz", int(last["step"].iloc[0]))
    grid = last.pivot(index="layer", columns="column", values="rank").reindex(columns=COLUMNS).to_numpy()
    np.testing.assert_array_equal(grid, expected)
    assert (last["n_seeds"] == 3).all() and (last["rank_min"] <= last["rank"]).all()
    assert last.loc[last["structural"], "sublayer"].tolist() == ["L11.ffn_text.intermediate", "L11.ffn_text.output"]
    mask_rows = cells[cells["threshold"].notna()]
    assert len(mask_rows) and cells.loc[cells["phase"] == "warmup", "threshold"].isna().all()
    with pytest.raises(ValueError, match="no Q-Former records to draw"):
        allocation_cells(records.assign(layer=np.nan))


# --- views ---


def test_heatmap_slider_has_one_state_per_thinned_step_ending_at_the_final_ranks(records):
    explorer = explore(records, heatmap_steps=8, n_boot=50)
    assert list(explorer.figures) == [
        "heatmap-iconqa", "trajectory-iconqa", "heatmap-vizwiz", "trajectory-vizwiz", "block-shares"
    ]
    heatmap = explorer.figures["heatmap-iconqa"]
    slider = heatmap.layout.sliders[0]
    steps = [int(s.label) for s in slider.steps]
    assert len(steps) == 8 and slider.active == 7 and steps[-1] == records["step"].max()
    np.testing.assert_array_equal(np.asarray(heatmap.data[0].z, dtype=float), drawn(mean_ranks(records, "iconqa", steps[-1])))
    middle = slider.steps[3].args
    np.testing.assert_array_equal(np.asarray(middle[0]["z"][0], dtype=float), drawn(mean_ranks(records, "iconqa", steps[3])))
    assert "iconqa: step" in middle[1]["title.text"] and str(steps[3]) in middle[1]["title.text"]
    hover = middle[0]["hovertemplate"][0]
    assert "%{text}" in hover and "rank %{customdata[0]:.3~g}" in hover  # the rank in both views
    np.testing.assert_array_equal(
        np.asarray(middle[0]["customdata"][0], dtype=float)[..., 0], mean_ranks(records, "iconqa", steps[3]).astype(np.float32)
    )  # the hover's rank: float32, shown to 3 significant digits
    at_step = records[(records["benchmark"] == "iconqa") & (records["step"] == steps[3])]
    assert f"step budget {int(at_step['budget'].iloc[0]):,}," in hover
    threshold = at_step["threshold"].dropna()
    assert (f"threshold {threshold.mean():.3g}" if len(threshold) else "not a mask step") in hover
    assert "init_r" in heatmap.data[0].text[0][0] and "L00.self_attn.query" in heatmap.data[0].text[0][0]
    assert [b.label for b in heatmap.layout.updatemenus[0].buttons] == ["rank", "importance (log10 score)"]
    trajectory = explorer.figures["trajectory-iconqa"]
    assert {t.name for t in trajectory.data if t.showlegend is not False} == set(BLOCKS)
    assert [s.fillcolor for s in trajectory.layout.shapes][:1] and len(trajectory.layout.shapes) == 3  # phases
    shares = explorer.figures["block-shares"]
    assert [b.label for b in shares.layout.updatemenus[0].buttons] == [
        "rank normalisation", "module normalisation", "parameter normalisation"
    ]


def test_names_never_reach_the_page_unescaped_and_two_displays_get_their_own_ids(records):
    hostile = '"><img src=x onerror=alert(1)>");alert(2);("'
    renamed = records.assign(benchmark=records["benchmark"].replace("vizwiz", hostile))
    explorer = explore(renamed, heatmap_steps=4, n_boot=20)
    page = explorer.to_html()
    assert hostile not in page and "<img" not in page  # escaped for HTML in the page, for JSON in the scripts
    assert f'data-view="heatmap-{html.escape(hostile)}"' in page
    first, second = explorer._repr_html_(), explorer._repr_html_()
    ids = [set(re.findall(r'id="(qb-[0-9a-f]+-\d+)"', fragment)) for fragment in (first, second)]
    assert len(ids[0]) == 5 + 1 and not ids[0] & ids[1]  # 5 plots and the table


def test_report_is_one_offline_file_reproducible_and_written_in_place(runs, report, tmp_path):
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", text) and "<link" not in text  # every script inlined
    assert "Plotly.newPlot" in text and text.count('class="qb-plot"') == 5
    assert "<table" in text and "normalized_entropy" in text
    again = write_report(runs, tmp_path / "again.html", n_boot=200)
    assert again.read_bytes() == report.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.html"]  # no temporary file left


def test_report_command_writes_the_page_and_names_a_bad_folder(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert out.stat().st_size > 1e6 and "opens offline" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["report", str(runs), "--out", str(out), "--method", "lora-r4"]) == 2
    assert "no run of method 'lora-r4'" in capsys.readouterr().err


# --- in a real browser ---

BROWSER_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the operating system, driven by its own ChromeDriver (nothing downloaded)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        reason = ("NO BROWSER: the report's browser test needs Chromium and ChromeDriver from the operating "
                  "system (Debian: apt-get install chromium chromium-driver); .ci/run installs them")
        if os.environ.get("QFORMER_BUDGET_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def read_heatmap(driver, benchmark: str) -> tuple[np.ndarray, str]:
    """The rank heatmap as drawn (plotly's computed cells, after decoding) and the title shown above it."""
    z, title = driver.execute_script(
        "const gd = document.querySelector(`[data-view='${arguments[0]}']`);"
        "return [Array.from(gd.calcdata[0][0].z, row => Array.from(row)), gd.layout.title.text];",
        f"heatmap-{benchmark}",
    )
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float), title


def test_report_in_chromium_no_errors_slider_moves_the_heatmap_and_a_real_picture(
    browser, report, records, tmp_path
):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length") >= 10
    )
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

    final_step = int(records["step"].max())
    z, title = read_heatmap(browser, "vizwiz")
    np.testing.assert_array_equal(z, drawn(mean_ranks(records, "vizwiz", final_step)))
    assert f"step {final_step}" in title

    # Click the slider's 6th tick with the mouse, as a reader would.
    container = browser.find_element(By.CSS_SELECTOR, "[data-view='heatmap-vizwiz']")
    ticks = container.find_elements(By.CSS_SELECTOR, ".slider-container rect.slider-tick-rect")
    shown = thin_steps(records["step"], HEATMAP_STEPS)
    assert len(ticks) == len(shown) == HEATMAP_STEPS < records["step"].nunique()  # thinned, first and last kept
    ActionChains(browser).move_to_element(ticks[5]).click().perform()
    chosen = int(shown[5])
    WebDriverWait(browser, 10).until(lambda d: f"step {chosen} " in read_heatmap(d, "vizwiz")[1])
    z, title = read_heatmap(browser, "vizwiz")
    np.testing.assert_array_equal(z, drawn(mean_ranks(records, "vizwiz", chosen)))
    assert not np.array_equal(z, drawn(mean_ranks(records, "vizwiz", final_step)))  # the picture did change

    # Hover the top-left cell (L00.self_attn.query): its label gives the module, rank, budget and threshold.
    plot_area = container.find_element(By.CSS_SELECTOR, "rect.nsewdrag")
    width, height = plot_area.size["width"], plot_area.size["height"]
    ActionChains(browser).move_to_element_with_offset(plot_area, -width // 2 + 5, -height // 2 + 5).pause(0.2) \
        .move_by_offset(2, 2).perform()
    WebDriverWait(browser, 10).until(lambda d: container.find_elements(By.CSS_SELECTOR, "g.hovertext"))
    hover = container.find_element(By.CSS_SELECTOR, "g.hovertext").get_attribute("textContent")
    rows = records[(records["benchmark"] == "vizwiz") & (records["step"] == chosen)]
    rank = mean_ranks(records, "vizwiz", chosen)[0, 0]
    assert "L00.self_attn.query" in hover and f"rank {rank:.3g} (mean of 3 seeds" in hover, hover
    assert "init_r 12" in hover and f"step budget {int(rows['budget'].iloc[0]):,}," in hover
    threshold = rows["threshold"].dropna()
    assert (f"threshold {threshold.mean():.3g}" if len(threshold) else "not a mask step") in hover
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(height + 100, 8000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    saved = os.environ.get("QFORMER_BUDGET_SCREENSHOTS")
    if saved:
        shutil.copy(shot, Path(saved) / "report.png")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.std() > 20  # not one flat colour
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200  # heatmap colours, lines, text
