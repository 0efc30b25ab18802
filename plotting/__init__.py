"""Figures of the budget records: pure figure data, the plot functions, and regenerating every figure.

A leaf: nothing else in qformer-budget imports it at module level (the live-view sinks load it when they draw).
"""
