"""Worker for test_launch.py: the recipes' launch check, then this process's rank and accelerate's process count."""

from accelerate import PartialState

from stackrlhf.launch import check_launch

if __name__ == "__main__":
    check_launch()
    state = PartialState()
    print(f"rank {state.process_index} of {state.num_processes}")
