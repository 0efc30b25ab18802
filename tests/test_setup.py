import pytest
import torch
from peft import get_peft_model
from transformers import T5Config, T5ForConditionalGeneration, Trainer, TrainerCallback, TrainingArguments

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.peft_hooks import (
    AdaLoraBudgetCallback,
    AdaLoraPeftModel,
    AdaLoraSetup,
    TrainingPlan,
    add_adalora,
    find_adalora_model,
)
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.methods import AdaLoraSettings
from qformer_budget.runner.tiny import build_tiny_instructblip

from tiny_training import FixedOrder, tiny_setup, trainer_arguments


@pytest.fixture
def tiny():
    return build_tiny_instructblip(seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(total_step=50, tfinal=0), "tfinal must be >= 1, got 0"),
        (dict(total_step=50, tinit=45, tfinal=5), r"tinit \(45\) must be < total_step - tfinal \(50 - 5 = 45\)"),
        (dict(total_step=0), "total_step must be >= 1, got 0"),
        (dict(total_step=50, deltaT=0), "deltaT must be >= 1, got 0"),
        (dict(total_step=50, init_r=4, target_r=4), "need 0 <= target_r < init_r, got target_r=4, init_r=4"),
        (dict(total_step=50, beta1=1.0), r"beta1 must be in \(0, 1\), got 1.0"),
        (dict(total_step=50, orth_reg_weight=-1), "orth_reg_weight must be >= 0, got -1"),
        (dict(total_step=50, placement="attn"), "unknown placement 'attn'"),
    ],
)
def test_impossible_setups_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaLoraSetup(**kwargs)


def test_model_without_a_qformer_is_refused():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="T5ForConditionalGeneration has no Q-Former"):
        add_adalora(t5, AdaLoraSetup(total_step=20))


def test_regex_that_matches_nothing_is_refused(tiny):
    with pytest.raises(ValueError, match="target regex 'qformer_nothing' matches no Linear layer of InstructBlip"):
        add_adalora(tiny[0], AdaLoraSetup(total_step=20, target_regex="qformer_nothing"))


def test_regex_reaching_a_linear_outside_the_grammar_is_refused(tiny):
    model = tiny[0]
    model.value_head = torch.nn.Linear(4, 1)
    try:
        with pytest.raises(ValueError, match=r"matches 1 Linear layers the grammar cannot name \(first: 'value_head'\)"):
            add_adalora(model, AdaLoraSetup(total_step=20, target_regex=r".*\.q|value_head"))
    finally:
        del model.value_head


def test_only_the_adapter_trains_and_init_is_seeded(tiny):
    model = add_adalora(tiny[0], AdaLoraSetup(total_step=20), seed=3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and ".qformer." in n for n in trainable)
    again = add_adalora(build_tiny_instructblip(seed=0)[0], AdaLoraSetup(total_step=20), seed=3)
    first = dict(model.named_parameters())
    assert all(torch.equal(first[n], p) for n, p in again.named_parameters() if p.requires_grad)


def orthogonal_penalty(model) -> torch.Tensor:
    """AdaLoRA's regulariser, computed independently: mean over A and B of ||P P^T - I||_F."""
    terms = []
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            terms.append(torch.linalg.matrix_norm(param @ param.T - torch.eye(param.shape[0])))
        elif ".lora_B." in name:
            terms.append(torch.linalg.matrix_norm(param.T @ param - torch.eye(param.shape[1])))
    return torch.stack(terms).mean()


def test_orthogonal_regulariser_is_applied(tiny):
    model, processor = tiny
    batch = InstructBlipCollator(processor)(generate_examples(4, seed=0))
    setup = AdaLoraSetup(total_step=20, orth_reg_weight=0.7)
    ours = add_adalora(model, setup, seed=0)
    with torch.no_grad():
        plain_loss = ours.get_base_model()(**batch).loss  # lora_E starts at 0: the adapter adds nothing yet
        loss = ours(**batch).loss
        expected = 0.7 * orthogonal_penalty(ours)
    assert expected > 0.1
    torch.testing.assert_close(loss - plain_loss, expected, rtol=1e-4, atol=1e-6)
    # The pitfall this guards against: a plain PeftModel silently drops the regulariser.
    plain = get_peft_model(build_tiny_instructblip(seed=0)[0], setup.to_peft_config())
    assert not isinstance(plain, AdaLoraPeftModel)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).loss, plain.get_base_model()(**batch).loss)


def test_find_adalora_model_refuses_other_models(tiny):
    with pytest.raises(TypeError, match="expected a model carrying an AdaLoRA adapter"):
        find_adalora_model(tiny[0])


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)}


class _StepCounter(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.max_steps = state.max_steps

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step


@pytest.mark.parametrize(
    "n, batch, epochs, accumulation, drop_last",
    [(50, 8, 2, 1, False), (50, 8, 3, 3, False), (50, 8, 1.5, 2, True), (7, 8, 4, 5, False), (64, 4, 1, 1, True)],
)
def test_training_plan_matches_the_trainer(tmp_path, n, batch, epochs, accumulation, drop_last):
    data = [{"x": torch.randn(2), "y": torch.randn(())} for _ in range(n)]
    counter = _StepCounter()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, num_train_epochs=epochs,
        gradient_accumulation_steps=accumulation, dataloader_drop_last=drop_last, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=_Regression(), args=args, train_dataset=data, callbacks=[counter]).train()
    plan = TrainingPlan(n, batch, epochs=epochs, gradient_accumulation_steps=accumulation, drop_last=drop_last)
    assert plan.total_optimizer_steps == counter.max_steps == counter.steps


def test_callback_refuses_total_step_that_disagrees_with_the_trainer(tiny, tmp_path):
    model, processor = tiny
    setup = tiny_setup(total_step=40)
    peft_model = add_adalora(model, setup, seed=0)
    args = trainer_arguments(tmp_path, tiny_setup(total_step=30))
    trainer = Trainer(
        model=peft_model, args=args, train_dataset=FixedOrder(30, 0), data_collator=InstructBlipCollator(processor),
        callbacks=[AdaLoraBudgetCallback()],
    )
    with pytest.raises(ValueError, match=r"AdaLoRA total_step \(40\) differs from the Trainer's number of optimizer steps \(30\)"):
        trainer.train()


def test_setup_from_plan_takes_the_plans_step_count():
    plan = TrainingPlan(100, 8, epochs=3, gradient_accumulation_steps=2)
    assert AdaLoraSetup.from_plan(plan, tinit=2, tfinal=3).total_step == plan.total_optimizer_steps == 21


def test_from_plan_takes_the_configs_phase_fractions():
    plan = TrainingPlan(48, 4, epochs=2)  # 24 optimizer steps: a small first try
    setup = AdaLoraSetup.from_plan(plan, warmup_fraction=0.1, final_fraction=0.2, deltaT=2)
    expected = AdaLoraSettings(deltaT=2, warmup_fraction=0.1, final_fraction=0.2).schedule(24)  # as a sweep's run
    assert (setup.total_step, setup.tinit, setup.tfinal) == (24, expected.tinit, expected.tfinal) == (24, 2, 4)
    with pytest.raises(ValueError, match="give both warmup_fraction and final_fraction, or neither"):
        AdaLoraSetup.from_plan(plan, warmup_fraction=0.1)
    with pytest.raises(ValueError, match="give tinit/tfinal or warmup_fraction/final_fraction, not both"):
        AdaLoraSetup.from_plan(plan, warmup_fraction=0.1, final_fraction=0.2, tinit=3)
