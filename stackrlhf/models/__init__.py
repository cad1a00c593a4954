"""Models: the value-head wrappers (`modeling_base`, `modeling_value_head`), loading with LoRA and 8/4-bit
(`loading`), the bundled tiny model's name (`bundled`) and the llama2.c converter behind it (`llama2c`)."""
