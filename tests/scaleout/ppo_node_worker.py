"""Worker for test_multinode.py: the PPO recipe as `recipes/ppo_stackllama.py` runs it (`run_recipe`), after which
every rank saves its policy's trainable weights to `<weights_dir>/rank<N>.safetensors` for the test to compare.

Usage: `python ppo_node_worker.py WEIGHTS_DIR [recipe options...]` (under a launcher).
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from stackrlhf.recipes import ppo
from stackrlhf.recipes.runner import run_recipe

trainers: list[ppo.PPOTrainer] = []


class RecordingPPOTrainer(ppo.PPOTrainer):
    """The recipe's trainer, remembered so that its weights can be read after the run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        trainers.append(self)


def main(weights_dir: Path, argv: list[str]) -> int:
    ppo.PPOTrainer = RecordingPPOTrainer
    code = run_recipe(ppo.make_parser(), ppo.main, argv)
    if code == 0:
        (trainer,) = trainers
        model = trainer.accelerator.unwrap_model(trainer.model)
        weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(weights_dir / f"rank{trainer.accelerator.process_index}.safetensors"))
    return code


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2:]))
