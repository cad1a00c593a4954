"""The classic PPO trainer (TRL 0.11.4's API on current transformers/peft) and the loop, checkpoints and reports
around it: `ppo_config`, `ppo_trainer` (with `lean_forward`, its memory-lean forward passes), `rl_loop` (driving any
`protocol.RLTrainer`), `checkpointing`, `reporting`."""
