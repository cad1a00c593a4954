"""`python -m stackrlhf.planner [options]`: the same as `stackrlhf plan`."""

from stackrlhf.planner.cli import run

raise SystemExit(run())
