"""qformer-budget: where AdaLoRA keeps its rank budget in the Q-Former of InstructBLIP."""
