"""A drop-in replacement for peft's AdaLoRA ``RankAllocator`` that keeps its averages in flat buffers.

peft's allocator loops in Python over every adapter parameter and allocates about ten new tensors
per parameter per step (``update_ipt``), and loops again over every module at each mask step
(``mask_to_budget``). :class:`FastRankAllocator` computes the same numbers with a few ops over one
flat buffer per quantity: the importance averages are bit-for-bit peft's in every dtype (the same
elementwise ops in the same order, rounded where peft's are) and the triplet scores reduce whole groups of equally shaped
modules at once. The update of the averages, and on the steps that need them the element scores, run as one
pass over the flat buffers (:func:`update_averages`, compiled with ``torch.compile``, eager where no compiler
works). It is optional and off by default: swap it in with :func:`use_fast_allocator`
(or ``BudgetRecorder(..., fast_allocator=True)``); peft's ``AdaLoraModel.update_and_allocate`` keeps
driving it unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.adalora import AdaLoraModel

from qformer_budget.core.adalora_rules import kept_directions, rank_pattern_keys, threshold_rank
from qformer_budget.core.records import ModuleInfo

from .model import find_adalora_model
from .peft_internals import AVERAGES, RankAllocator, allocator_averages, allocator_takes, deepspeed_active

_ADAPTER_MATRICES = ("lora_A", "lora_E", "lora_B")
_KEPT_AVERAGES = ("exp_avg_ipt", "exp_avg_unc")  # of peft's AVERAGES; its ``ipt`` is written, never read


@dataclass(frozen=True)
class _Slab:
    """One matrix kind (A, E or B) of every module of one shape: a contiguous ``(count, *matrix shape)`` slab."""

    positions: tuple[int, ...]  # of its matrices in the per-matrix list (module by module: A, E, B)
    start: int
    shape: tuple[int, ...]

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[self.start : self.start + math.prod(self.shape)].view(self.shape)


class TripletLayout:
    """Where every adapted module's A, E and B elements sit in one flat buffer.

    Modules of equal shape sit next to each other: a group of G modules holds its E elements as a
    ``(G, r, 1)`` slab, its A elements as ``(G, r, in)`` and its B elements as ``(G, out, r)``, so
    the triplet scores of a whole group reduce with one op per matrix kind instead of one per
    module. Matrices are numbered module by module (A, E, B), in the order of the given shapes.
    """

    def __init__(self, rank: int, shapes: Sequence[tuple[int, int]]) -> None:
        """``shapes``: ``(in_features, out_features)`` of each module, in module order."""
        self.rank = rank
        self.n_modules = len(shapes)
        members_by_shape: dict[tuple[int, int], list[int]] = {}
        for index, shape in enumerate(shapes):
            members_by_shape.setdefault(shape, []).append(index)
        self.groups: list[tuple[_Slab, _Slab, _Slab]] = []  # (A, E, B) slabs of each shape group
        offset = 0
        for (fan_in, fan_out), members in members_by_shape.items():
            slabs = {}
            for kind, shape in ((1, (rank, 1)), (0, (rank, fan_in)), (2, (fan_out, rank))):
                slabs[kind] = _Slab(tuple(3 * m + kind for m in members), offset, (len(members), *shape))
                offset += len(members) * math.prod(shape)
            self.groups.append((slabs[0], slabs[1], slabs[2]))
        self.numel = offset
        grouped_order = torch.tensor([p // 3 for _, e, _ in self.groups for p in e.positions])
        self._to_module_order = torch.argsort(grouped_order)  # grouped score rows -> module order
        self._in_module_order = bool((grouped_order == torch.arange(self.n_modules)).all())

    @property
    def slabs(self) -> list[_Slab]:
        return [slab for group in self.groups for slab in group]

    def matrix_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A view of ``flat`` per matrix, shaped like it, numbered module by module (A, E, B)."""
        views: list = [None] * (3 * self.n_modules)
        for slab in self.slabs:
            for position, view in zip(slab.positions, slab.view(flat).unbind(0)):
                views[position] = view
        return views

    def triplet_scores(self, element_scores: torch.Tensor) -> torch.Tensor:
        """AdaLoRA's triplet scores ``(n_modules, r)`` in module order, from flat element scores.

        Direction i of a module scores ``s(E)_i + (mean_j s(A)_ij + mean_j s(B)_ji)``: peft's
        ``mask_to_budget`` operations in peft's rounding order, so the result is bit for bit peft's.
        """
        rows = []
        for a, e, b in self.groups:
            rows.append(e.view(element_scores).squeeze(2) + (a.view(element_scores).mean(dim=2) + b.view(element_scores).mean(dim=1)))
        grouped = rows[0] if len(rows) == 1 else torch.cat(rows)
        if self._in_module_order:
            return grouped
        return grouped.index_select(0, self._to_module_order.to(grouped.device))


class ElementwiseProducts:
    """Writes ``lefts[i] * rights[i]`` for every adapter matrix into its place in a flat buffer.

    Small matrices go a slab at a time (stack both factors, one multiply: three ops per slab
    instead of one per matrix); larger ones are multiplied one by one straight into place, which
    copies nothing twice.
    """

    STACK_BELOW = 2048  # elements per matrix; below this, per-op overhead outweighs the extra copies

    def __init__(self, layout: TripletLayout, flat: torch.Tensor) -> None:
        self.flat = flat
        self._stacked: list[tuple[torch.Tensor, tuple[int, ...]]] = []
        self._one_by_one: list[tuple[int, torch.Tensor]] = []
        for slab in layout.slabs:
            view = slab.view(flat)
            if math.prod(slab.shape[1:]) < self.STACK_BELOW:
                self._stacked.append((view, slab.positions))
            else:
                self._one_by_one.extend(zip(slab.positions, view.unbind(0)))

    def __call__(self, lefts: Sequence[torch.Tensor], rights: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            for view, positions in self._stacked:
                torch.mul(torch.stack([lefts[i] for i in positions]), torch.stack([rights[i] for i in positions]), out=view)
            for position, target in self._one_by_one:
                torch.mul(lefts[position], rights[position], out=target)
        return self.flat


class DictTripletScores:
    """Triplet scores from peft's own per-parameter dicts (``exp_avg_ipt``, ``exp_avg_unc``), vectorised.

    The element scores ``exp_avg_ipt * exp_avg_unc`` go into one reused flat buffer laid out by
    :class:`TripletLayout` and are reduced a shape group at a time: bit for bit the numbers peft
    masks with, without peft's Python loop over modules.
    """

    def __init__(self, modules: Sequence[ModuleInfo], adapter: str, rank: int) -> None:
        self.modules = tuple(modules)
        self.layout = TripletLayout(rank, [(m.in_features, m.out_features) for m in self.modules])
        self.keys = [f"{m.module}.{matrix}.{adapter}" for m in self.modules for matrix in _ADAPTER_MATRICES]
        self._products: ElementwiseProducts | None = None

    def __call__(self, allocator: RankAllocator) -> torch.Tensor | None:
        """``(n_modules, r)`` scores in module order; None while the allocator holds no averages."""
        held = allocator_averages(allocator)
        averages, uncertainties = held["exp_avg_ipt"], held["exp_avg_unc"]
        if not averages:
            return None
        first = averages[self.keys[0]]
        if self._products is None or self._products.flat.device != first.device or self._products.flat.dtype != first.dtype:
            self._products = ElementwiseProducts(self.layout, torch.empty(self.layout.numel, dtype=first.dtype, device=first.device))
        element_scores = self._products([averages[k] for k in self.keys], [uncertainties[k] for k in self.keys])
        with torch.no_grad():
            return self.layout.triplet_scores(element_scores)


def update_averages(
    products: torch.Tensor,
    average: torch.Tensor,
    uncertainty: torch.Tensor,
    scores: torch.Tensor | None,
    beta1: float,
    beta2: float,
) -> None:
    """peft's ``update_ipt`` on flat buffers, in place: ``products`` holds ``p * p.grad``.

    ``average = beta1 * average + (1 - beta1) * |products|`` and ``uncertainty = beta2 * uncertainty +
    (1 - beta2) * | |products| - average |``, each product and sum rounded to the buffers' dtype as peft's
    separate ops round them; with ``scores``, also the element scores ``average * uncertainty`` of the new
    averages. Compiled, this is one pass that reads three buffers and writes two (three with scores).
    """
    sensitivity = products.abs()
    new_average = average * beta1 + sensitivity * (1 - beta1)
    new_uncertainty = uncertainty * beta2 + (sensitivity - new_average).abs() * (1 - beta2)
    average.copy_(new_average)
    uncertainty.copy_(new_uncertainty)
    if scores is not None:
        scores.copy_(new_average * new_uncertainty)


# emulate_precision_casts: round every intermediate of a bf16/fp16 kernel to its dtype, as eager ops (and peft) do;
# without it inductor keeps intermediates in float32 and rounds once, which changes the averages' low bits.
_COMPILE_OPTIONS = {"emulate_precision_casts": True}


class FusedUpdate:
    """:func:`update_averages` compiled with ``torch.compile`` at its first call, eager if compiling fails.

    A failed compile (no C++ compiler for the CPU, no Triton for the GPU) warns once, naming the error, and
    every later call runs eagerly; the buffers are untouched by the failed attempt, and eager and compiled
    results are the same bits. Eager calls go a chunk of :attr:`EAGER_CHUNK` elements at a time, so that
    the temporaries of the separate ops stay small and in cache instead of costing a fresh allocation of
    the whole buffer's size per op.
    """

    EAGER_CHUNK = 1 << 18

    def __init__(self, compile: bool = True) -> None:
        self.compiled: Callable[..., None] | None = (
            torch.compile(update_averages, fullgraph=True, dynamic=True, options=_COMPILE_OPTIONS) if compile else None
        )

    def __call__(self, *arguments: Any) -> None:
        """:func:`update_averages` (same arguments), compiled, or eagerly a chunk at a time."""
        if self.compiled is not None:
            try:
                return self.compiled(*arguments)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the same eager ops
                warnings.warn(
                    f"FastRankAllocator: torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
                    "updating the importance averages eagerly (same results, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.compiled = None
        *buffers, beta1, beta2 = arguments
        for start in range(0, buffers[0].numel(), self.EAGER_CHUNK):
            chunk = slice(start, start + self.EAGER_CHUNK)
            update_averages(*(None if buffer is None else buffer[chunk] for buffer in buffers), beta1, beta2)
        return None


class FastRankAllocator(RankAllocator):
    """peft's ``RankAllocator`` with its averages in flat buffers and its loops replaced by fused ops.

    Same budget schedule (inherited), same importance averages, same masks and the same
    ``rank_pattern`` as peft's; peft's ``AdaLoraModel.update_and_allocate`` drives it unchanged.
    ``exp_avg_ipt`` and ``exp_avg_unc`` stay dicts keyed by parameter name in peft's order, holding
    views of the flat buffers (empty before the first update and after ``reset_ipt``). ``ipt`` stays
    empty: peft only writes it, and the fused update keeps the sensitivities in its pass.

    The element scores ``exp_avg_ipt * exp_avg_unc`` come out of the update pass on mask steps and when
    :attr:`score_next_update` is set (the recorder sets it on the steps it records); otherwise
    :meth:`triplet_scores` forms them in a pass of their own. ``compile_update=False`` keeps the
    update eager (the same bits).

    Under DeepSpeed (``deepspeed_config()`` set when the allocator is built) gradients must be
    gathered with ``safe_get_full_grad`` parameter by parameter, so every method falls back to
    peft's own and the averages live in peft's dicts.
    """

    def __init__(self, model: torch.nn.Module, peft_config, adapter_name: str, *, compile_update: bool = True) -> None:
        super().__init__(model, peft_config, adapter_name)
        self.falls_back_to_peft = deepspeed_active()
        self.score_next_update = False
        self._score_this_update = False
        self._update_averages = FusedUpdate(compile=compile_update)
        self._model = model
        triplets, self._peft_order = _adapter_triplets(model, adapter_name)
        ranks = {a.shape[0] for a, _, _ in triplets.values()}
        if len(ranks) != 1:
            raise ValueError(
                f"FastRankAllocator needs one rank for all modules, found ranks {sorted(ranks)} "
                "(an adapter reloaded after masking); use peft's RankAllocator"
            )
        self.modules = tuple(ModuleInfo(module, a.shape[1], b.shape[0]) for module, (a, _, b) in triplets.items())
        self.layout = TripletLayout(ranks.pop(), [(m.in_features, m.out_features) for m in self.modules])
        self._module_index = {m.module: i for i, m in enumerate(self.modules)}
        # Matrices and their names numbered as the layout numbers them: module by module, A, E, B.
        self._parameters = [param for triplet in triplets.values() for param in triplet]
        self._names = [f"{module}.{matrix}.{adapter_name}" for module in triplets for matrix in _ADAPTER_MATRICES]
        self._lora_e = self._parameters[1::3]
        self._lora_e_names = [rank_pattern_keys(module, adapter_name)[0] for module in triplets]
        self._dict_scores = DictTripletScores(self.modules, adapter_name, self.layout.rank)

    def reset_ipt(self) -> None:
        """Forget the averages, like peft's (peft calls this at the final mask step)."""
        super().reset_ipt()
        self._flat: dict[str, torch.Tensor] | None = None
        self._scores_fresh = False  # whether flat["scores"] holds the current averages' element scores

    def _allocate_averages(self) -> None:
        first = self._parameters[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self._parameters):
            raise ValueError("FastRankAllocator needs all adapter parameters on one device with one dtype")
        self._flat = {
            name: torch.zeros(self.layout.numel, dtype=first.dtype, device=first.device)
            for name in (*_KEPT_AVERAGES, "products", "scores")
        }
        for name in _KEPT_AVERAGES:
            views = dict(zip(self._names, self.layout.matrix_views(self._flat[name])))
            setattr(self, name, {key: views[key] for key in self._peft_order})
        self._products = ElementwiseProducts(self.layout, self._flat["products"])

    def load_averages(self, allocator: RankAllocator) -> None:
        """Take over the averages another allocator (peft's) holds, so that it can be swapped in mid-run."""
        self.reset_ipt()
        theirs = allocator_averages(allocator)
        if self.falls_back_to_peft:
            for name in AVERAGES:
                setattr(self, name, dict(theirs[name]))
        elif theirs["exp_avg_ipt"]:
            self._allocate_averages()
            for name in _KEPT_AVERAGES:
                ours = getattr(self, name)
                torch._foreach_copy_(list(ours.values()), [theirs[name][key] for key in ours])

    def update_and_allocate(self, model: torch.nn.Module, global_step: int, force_mask: bool = False):
        """peft's, scoring in the update pass when this step masks or :attr:`score_next_update` asks for it."""
        self._score_this_update = self.score_next_update or force_mask or self.budget_schedule(global_step)[1]
        self.score_next_update = False
        return super().update_and_allocate(model, global_step, force_mask)

    def update_ipt(self, model: torch.nn.Module) -> None:
        """Update the sensitivity averages from ``p.grad`` with peft's formula, in one fused pass."""
        if self.falls_back_to_peft:
            return super().update_ipt(model)
        self._check_model(model)
        if self._flat is None:
            self._allocate_averages()
        flat = self._flat
        products = self._products(self._parameters, [param.grad for param in self._parameters])
        scores = flat["scores"] if self._score_this_update else None
        with torch.no_grad():
            self._update_averages(products, flat["exp_avg_ipt"], flat["exp_avg_unc"], scores, self.beta1, self.beta2)
        self._scores_fresh = scores is not None
        self._score_this_update = False

    def triplet_scores(self, modules: Sequence[ModuleInfo] | None = None) -> torch.Tensor | None:
        """Triplet scores ``(n_modules, r)``, rows in ``modules``' order (default: the allocator's).

        None while no averages are held (before the first update, after ``reset_ipt``).
        """
        if self.falls_back_to_peft:
            scores = self._dict_scores(self)
        elif self._flat is None:
            return None
        else:
            flat = self._flat
            with torch.no_grad():
                if not self._scores_fresh:
                    torch.mul(flat["exp_avg_ipt"], flat["exp_avg_unc"], out=flat["scores"])
                    self._scores_fresh = True
                scores = self.layout.triplet_scores(flat["scores"])
        if scores is None or modules is None:
            return scores
        order = [self._module_index[m.module] for m in modules]
        if order == list(range(self.layout.n_modules)):
            return scores
        return scores.index_select(0, torch.tensor(order, device=scores.device))

    def mask_to_budget(self, model: torch.nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero ``lora_E`` where the triplet score is <= the ``(init_bgt - budget)``-th smallest, as peft does."""
        if self.falls_back_to_peft:
            return super().mask_to_budget(model, budget)
        self._check_model(model)
        scores = self.triplet_scores()
        threshold = torch.kthvalue(scores.reshape(-1), k=threshold_rank(self.init_bgt, budget))[0].item()
        dropped = scores <= threshold
        self._zero_lora_e(dropped)
        return dict(zip(self._lora_e_names, (~dropped).tolist()))

    def mask_using_rank_pattern(self, model: torch.nn.Module, rank_pattern: dict[str, list[bool]]) -> None:
        """Re-apply a frozen ``rank_pattern``, as peft does on every step of the final phase."""
        if self.falls_back_to_peft:
            return super().mask_using_rank_pattern(model, rank_pattern)
        self._check_model(model)
        kept = kept_directions(rank_pattern, [m.module for m in self.modules], self.adapter_name, self.layout.rank)
        kept = torch.from_numpy(kept).to(self._lora_e[0].device)
        self._zero_lora_e(~kept)

    def _zero_lora_e(self, dropped: torch.Tensor) -> None:
        """``masked_fill_(dropped, 0)`` on every module's ``lora_E`` at once: stack, fill, copy back."""
        with torch.no_grad():
            values = torch.stack(self._lora_e)
            values.masked_fill_(dropped.unsqueeze(-1), 0.0)
            torch._foreach_copy_(self._lora_e, list(values.unbind(0)))

    def _check_model(self, model: torch.nn.Module) -> None:
        if model is not self._model:
            raise ValueError("this FastRankAllocator was built for another model; build one per AdaLoraModel")


def _adapter_triplets(
    model: torch.nn.Module, adapter: str
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], list[str]]:
    """``module -> (lora_A, lora_E, lora_B)``, and the names peft's ``update_ipt`` reads, in its order.

    Refuses parameters that peft's name filter takes in but the flat layout has no place for
    (another adapter whose name contains this one's, LoRA embeddings).
    """
    found: dict[str, dict[str, torch.Tensor]] = {}
    names = []
    for name, param in model.named_parameters():
        if not allocator_takes(name, adapter):
            continue
        module, matrix, owner = name.rsplit(".", 2)
        if owner != adapter or matrix not in _ADAPTER_MATRICES or param.dim() != 2:
            raise ValueError(
                f"FastRankAllocator handles the 2-D lora_A/E/B matrices of one adapter, but peft's allocator "
                f"would also average {name!r}: use peft's RankAllocator for this model"
            )
        found.setdefault(module, {})[matrix] = param
        names.append(name)
    incomplete = [module for module, matrices in found.items() if len(matrices) != len(_ADAPTER_MATRICES)]
    if incomplete:
        raise ValueError(f"adapted module {incomplete[0]!r} lacks one of {_ADAPTER_MATRICES}")
    return {module: tuple(matrices[m] for m in _ADAPTER_MATRICES) for module, matrices in found.items()}, names


def use_fast_allocator(model: torch.nn.Module, *, compile_update: bool = True) -> FastRankAllocator:
    """Swap a :class:`FastRankAllocator` into the AdaLoRA model inside ``model`` and return it.

    Accepts a PeftModel or an AdaLoraModel (also wrapped by DDP or accelerate). Importance averages
    the current allocator already holds are carried over; a second call returns the same allocator.
    ``compile_update=False`` keeps the update eager (:class:`FusedUpdate`).
    """
    adalora: AdaLoraModel = find_adalora_model(model)
    current = adalora.rankallocator
    if isinstance(current, FastRankAllocator):
        return current
    fast = FastRankAllocator(adalora.model, current.peft_config, current.adapter_name, compile_update=compile_update)
    fast.load_averages(current)
    adalora.rankallocator = fast
    return fast
