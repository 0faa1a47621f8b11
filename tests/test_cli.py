"""The detectron command line: help, and overrides placed around the options."""
import pytest

from detectron_lib.cli import main, parse_args


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("config", "data", "train", "test", "proposals", "infer", "zoo"):
        assert command in out


def test_overrides_may_surround_options():
    args = parse_args(["test", "--cfg", "c.yaml", "A.B", "1", "--weights", "w.pth", "C.D", "(2,)"])
    assert args.weights == "w.pth" and args.cfg_file == "c.yaml"
    assert args.opts == ["A.B", "1", "C.D", "(2,)"]
    args = parse_args(["train", "SOLVER.BASE_LR", "-0.5", "--cfg", "c.yaml"])
    assert args.opts == ["SOLVER.BASE_LR", "-0.5"]


def test_misspelled_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["test", "--cfg", "c.yaml", "--weights", "w.pth", "--treshold", "0.5"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --treshold" in capsys.readouterr().err
