"""The validation loss reported after LoRA SFT: the trainer's own last evaluation is reused
instead of evaluating the same weights twice."""

from types import SimpleNamespace

from ragft_dagster.training.sft import final_eval_loss


class _Trainer:
    def __init__(self, log_history, global_step):
        self.state = SimpleNamespace(log_history=log_history, global_step=global_step)
        self.evaluations = 0

    def evaluate(self):
        self.evaluations += 1
        return {"eval_loss": 9.0}


def test_the_eval_logged_at_the_last_step_is_reused():
    trainer = _Trainer(
        [
            {"loss": 3.5, "step": 25},
            {"eval_loss": 3.13, "step": 25},
            {"eval_loss": 3.02, "step": 50},
        ],
        50,
    )
    assert final_eval_loss(trainer) == 3.02
    assert trainer.evaluations == 0


def test_an_earlier_eval_is_not_taken_for_the_final_weights():
    trainer = _Trainer([{"eval_loss": 3.13, "step": 25}, {"loss": 3.0, "step": 50}], 50)
    assert final_eval_loss(trainer) == 9.0
    assert trainer.evaluations == 1


def test_no_logged_eval_evaluates():
    trainer = _Trainer([{"loss": 3.0, "step": 7}], 7)
    assert final_eval_loss(trainer) == 9.0
    assert trainer.evaluations == 1
