"""The README's Python snippets run as written (offline, from an empty working directory)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{index}" for index in range(len(SNIPPETS))])
def test_readme_python_snippet_runs_as_written(snippet, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # HF_HUB_OFFLINE=1 (conftest): everything comes from the package and its cache
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    if "PPOTrainer(" in snippet:
        assert re.fullmatch(r"KL -?\d+\.\d{3}, policy loss -?\d+\.\d{3}\n", capsys.readouterr().out)
    if "train_sft" in snippet:
        assert (
            namespace["summary"]["eval_loss"] > 0
            and (tmp_path / "outputs" / "sft" / "adapter_model.safetensors").is_file()
        )
