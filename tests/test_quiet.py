"""Third-party noise is filtered in one place, and `--verbose` / STACKRLHF_VERBOSE shows it."""

import logging

import pytest

from stackrlhf import quiet


@pytest.mark.parametrize(("verbose", "shown"), [(False, False), (True, True)])
def test_bitsandbytes_kernels_message_is_filtered_unless_verbose(verbose, shown, monkeypatch, caplog):
    monkeypatch.setenv("STACKRLHF_VERBOSE", "1" if verbose else "0")
    quiet.install()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'")
        logger.warning("Another bitsandbytes warning")
    messages = [record.getMessage() for record in caplog.records]
    kernels = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'."
    assert (kernels in messages) is shown
    assert "Another bitsandbytes warning" in messages


def test_verbose_flag_is_an_option_of_every_recipe():
    from stackrlhf import cli

    for name in cli.RECIPE_MODULES:
        if name not in cli.LIGHT_COMMANDS:
            assert "verbose" in {action.dest for action in cli.RECIPES[name].make_parser()._actions}, name
