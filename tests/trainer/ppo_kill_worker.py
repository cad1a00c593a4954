"""Runs of the PPO recipe killed with SIGKILL at named points, for tests/recipes/test_ppo_recovery.py.

`python ppo_kill_worker.py PLAN.json RESULTS.json`: PLAN holds `{"runs": [{"argv": [...], "kill": POINT or null},
...]}`. The recipe's modules are imported once; each run is a forked child (as fresh as a new process, without
paying the imports again) that goes through `run_recipe` with `argv` and, when `kill` names a point, kills itself
there, leaving what a `kill -9` at that moment would. RESULTS gets, per run, its exit code or the signal that ended it.

Points (each fires once, in the run's first pass over it):

* `samples-write`: writing `samples.json`, half of it in its staging file;
* `stats-rewrite`: rewriting `stats.jsonl` on resume, all of it in its staging file, before the rename;
* `stats-append`: appending step 3's line to `stats.jsonl`, half of it written;
* `mid-save`: saving checkpoint-2, its optimizer file half written;
* `before-rename`: checkpoint-2 complete under its staging name, before the rename;
* `mid-rotation`: deleting checkpoint-1 when checkpoint-3 is saved, after the rename and one deleted file;
* `after-rotation`: checkpoint-4 saved and the old ones deleted, before the next step;
* `final-save`: one file of the final policy moved into place, the others still staged.
"""

import json
import os
import pathlib
import shutil
import signal
import sys
from pathlib import Path

from stackrlhf import atomic
from stackrlhf.recipes import ppo
from stackrlhf.recipes.runner import run_recipe
from stackrlhf.trainer import checkpointing, reporting, rl_loop


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    """Patch the recipe's writers so that this process kills itself at `point`."""
    if point in {"samples-write", "stats-rewrite"}:
        real_write_text = reporting.write_text_atomically
        target = {"samples-write": "samples.json", "stats-rewrite": "stats.jsonl"}[point]

        def write_text(path, text):
            path = Path(path)
            if path.name == target and (point == "samples-write" or path.exists()):
                staged = atomic.staging_path(path.parent, path.name)
                staged.write_text(text[: len(text) // 2] if point == "samples-write" else text)
                die()
            real_write_text(path, text)

        reporting.write_text_atomically = write_text
    elif point == "stats-append":
        real_append = reporting.StatsLog.write

        def append(self, step, *args):
            if step == 3:
                with self.path.open("a") as f:
                    f.write('{"step": 3, "reward_mean": 0.')
                die()
            return real_append(self, step, *args)

        reporting.StatsLog.write = append
    elif point == "mid-save":
        real_save_state = checkpointing.save_state

        def save_state(directory, name, state):
            real_save_state(directory, name, state)
            if name == "optimizer" and directory.name.startswith(".staging-checkpoint-2."):
                written = directory / "optimizer.safetensors"
                os.truncate(written, written.stat().st_size // 2)
                die()

        checkpointing.save_state = save_state
    elif point == "before-rename":
        real_rename = pathlib.Path.rename

        def rename(self, target):
            if self.name.startswith(".staging-checkpoint-2.") and Path(target).name == "checkpoint-2":
                die()
            return real_rename(self, target)

        pathlib.Path.rename = rename
    elif point == "mid-rotation":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            path = Path(path)
            if path.name.startswith(".staging-checkpoint-1.") and path.is_dir() and not kwargs.get("ignore_errors"):
                (path / "trainable.safetensors").unlink()
                die()
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif point == "after-rotation":
        real_save = rl_loop.save_ppo_checkpoint

        def save(trainer, output_dir, step, *args, **kwargs):
            path = real_save(trainer, output_dir, step, *args, **kwargs)
            if step == 4:
                die()
            return path

        rl_loop.save_ppo_checkpoint = save
    elif point == "final-save":
        real_replace = os.replace

        def replace(source, target):
            real_replace(source, target)
            if Path(source).parent.name.startswith(".staging-files."):
                die()

        os.replace = replace
    else:
        raise ValueError(f"unknown kill point {point!r}")


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for run in plan["runs"]:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if run["kill"]:
                    install(run["kill"])
                code = run_recipe(ppo.make_parser(), ppo.main, run["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        signaled = os.WIFSIGNALED(status)
        results.append({"signal": os.WTERMSIG(status) if signaled else None, "rc": None if signaled else status >> 8})
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
