"""MemVP (Jie et al., ICML 2024): InstructBLIP's query outputs as key-value memory in every FFN of the LM.

Instead of prepending the Q-Former's query tokens to the LM input, a trainable projector maps them to the LM
width and every FFN block adds ``s * act(x (V + P_k)^T) (V + P_v)`` with ``V = scale * Projector(queries)``,
so the LM's sequence is the text prompt alone. ``add_memvp`` returns a
:class:`vl_methods.memvp.model.MemVPModel`; see that module for the design choices.
"""

from .config import MemVPConfig, memvp_trainable_parameters
from .model import add_memvp, load_memvp, save_memvp

__all__ = ["MemVPConfig", "add_memvp", "load_memvp", "memvp_trainable_parameters", "save_memvp"]
