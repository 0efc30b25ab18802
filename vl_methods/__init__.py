"""Vision-language PEFT methods beside AdaLoRA, built on the same InstructBLIP models.

- :mod:`vl_methods.routing`: routing functions (Qu et al., ECCV 2024) that mix visual features into
  the LoRA or AdaLoRA bottleneck without new parameters;
- :mod:`vl_methods.memvp`: MemVP (Jie et al., ICML 2024), visual tokens as key-value memory in the
  language model's FFN blocks instead of extra input tokens.
"""
