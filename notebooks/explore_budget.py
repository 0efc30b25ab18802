# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Where does AdaLoRA keep its budget in the Q-Former?
#
# This notebook loads recorded runs (by default the demo's, `make demo` writes them to `demo-out/`),
# computes the importance metrics of `qformer_budget.analysis` and draws the figures. Set the environment
# variable `QFORMER_BUDGET_RUNS` to a folder of your own runs, and `QFORMER_BUDGET_METHOD` to their method tag
# (the run folders' parent name) if it is not the demo's.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from qformer_budget.analysis import (
    allocation_correlation,
    block_share,
    bootstrap_block_share,
    compare_benchmarks,
    component_share,
    find_runs,
    load_metrics,
    load_runs,
    rank_pattern_for_lora,
    replay_allocation,
    run_summary,
    settle_step,
)
from qformer_budget.plotting import explore, plot_rank_heatmap, plot_rank_trajectories
from qformer_budget.plotting.figure_data import phase_spans, rank_heatmap_data, trajectory_data

RUNS = Path(os.environ.get("QFORMER_BUDGET_RUNS", "../demo-out"))
METHOD = os.environ.get("QFORMER_BUDGET_METHOD", "adalora-all_linear-r12to4")
records = load_runs(RUNS, method=METHOD)
benchmarks = sorted(records["benchmark"].unique())
print(f"{records['run'].nunique()} runs, {len(records):,} records, benchmarks: {', '.join(benchmarks)}")

# %% [markdown]
# ## One row per run
# Final total rank, allocation entropy (1 = spread evenly over modules), each block's share of the kept
# rank and the step from which that share stays within 2 points of its final value.

# %%
run_summary(records).drop(columns=["run"]).round(3)

# %% [markdown]
# ## Block shares, three ways
# `rank`: share of kept directions. `module`: mean rank per module, so cross-attention (present in half
# the layers) is not penalised for having fewer modules. `parameter`: share of kept adapter parameters, so
# the larger FFN matrices weigh more. The last layer's text FFN gets no task gradient (its output never
# reaches the LLM) and is left out.

# %%
shares = {norm: block_share(records, normalize=norm) for norm in ("rank", "module", "parameter")}
table = pd.concat(
    {norm: s.groupby(["benchmark", "block"])["share"].mean().unstack() for norm, s in shares.items()}, axis=1
)
table.round(3)

# %% [markdown]
# ## Uncertainty over seeds
# Seed-bootstrap confidence intervals of the module-normalised shares, and permutation tests between
# benchmarks: `exceeds_seed_spread` says whether a difference is larger than the spread between seeds.

# %%
intervals = bootstrap_block_share(shares["module"], n_boot=1000, seed=0)
intervals.round(3)

# %%
if len(benchmarks) > 1:
    display_columns = ["benchmark_a", "benchmark_b", "block", "difference", "p_value", "exceeds_seed_spread"]
    comparison = compare_benchmarks(shares["module"], n_permutations=2000, seed=0)
    print(comparison[[c for c in display_columns if c in comparison.columns]].round(3).to_string(index=False))
    print(allocation_correlation(records).round(3).to_string(index=False))

# %% [markdown]
# ## The final allocation, layer by layer

# %%
for benchmark in benchmarks:
    ax = plot_rank_heatmap(
        rank_heatmap_data(records[records["benchmark"] == benchmark]), title=f"{benchmark}: final rank"
    )
    plt.show()

# %% [markdown]
# ## Step by step: how the allocation moves
# `explore` shows each benchmark's heatmap with a slider over the recorded steps (rank or importance; the
# hover gives the module, its rank and score, and the step's budget and threshold), the block shares over
# training with the AdaLoRA phases, the seed-bootstrap block shares and the metrics table.
# `explorer.write_html("report.html")` saves the same views as one offline page for a colleague without
# Python; `qformer-budget report RUNS --out report.html` does it from the shell.

# %%
explorer = explore(records)
explorer

# %% [markdown]
# ## When does the allocation settle?
# The step from which each block's share stays within 2 points of its final value (median over seeds).

# %%
settle_step(records).groupby(["benchmark", "block"])["settle_step"].median().unstack()

# %% [markdown]
# ## Replay: what would AdaLoRA keep with half the budget?
# The recorded per-direction scores let us recompute AdaLoRA's allocation offline for another target rank,
# and turn it into a static `rank_pattern` that plain LoRA can use.

# %%
final_target = int(records["budget"].iloc[-1] // records.groupby("run")["module"].nunique().iloc[0])
half = max(1, final_target // 2)
replayed = replay_allocation(records, target_r=half)
one_run = replayed[replayed["run"] == replayed["run"].iloc[0]]
ax = plot_rank_heatmap(rank_heatmap_data(one_run), title=f"replayed at target_r={half}")
plt.show()
pattern = rank_pattern_for_lora(one_run)
print(f"plain LoRA: {len(pattern['target_modules'])} modules, default r={pattern['r']}")

# %% [markdown]
# ## What the runs scored

# %%
metrics = load_metrics(RUNS)
metrics.groupby(["benchmark", "method", "metric"])["value"].agg(["mean", "std", "count"]).round(4)

# %% [markdown]
# ## One budget for the Q-Former and the LLM
# The demo's joint runs share one AdaLoRA budget between the Q-Former and the language model
# (`placement = "all_linear+llm_all_linear"`). `component_share` splits the kept rank between them; the
# block shares above stay shares within the Q-Former.

# %%
JOINT = "adalora-all_linear+llm_all_linear-r12to4"
if any(run.parent.name == JOINT for run in find_runs(RUNS)):
    joint = load_runs(RUNS, method=JOINT)
    print(component_share(joint).pivot(index="benchmark", columns="component", values="share").round(3))
    components = trajectory_data(joint, by="component")
    for benchmark in sorted(joint["benchmark"].unique()):
        plot_rank_trajectories(
            components[components["benchmark"] == benchmark], phase_spans(joint),
            title=f"{benchmark}: share of the whole kept rank per component",
        )
        plt.show()
    llm = rank_heatmap_data(joint[joint["benchmark"] == benchmark], component="llm")
    plot_rank_heatmap(llm, title=f"{benchmark}: final rank per LLM module")
    plt.show()
else:
    print(f"no joint runs ({JOINT}) below {RUNS}")
