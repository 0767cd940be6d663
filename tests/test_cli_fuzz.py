"""Command-line fuzz: every option of every command, given a hostile value, is one line.

The cases are read off the parser itself (:func:`minicrate.cli.build_parser`), so a new
command or option is fuzzed without touching this file: for every option with a checked
type (:mod:`minicrate.commands.arguments`) it tries a missing value, the wrong type, NaN and
infinities, values just outside its range (negative, zero) and huge ones; for every path
option, paths of the wrong kind.  Each must give exit status 2 (a usage error) with one line
on stderr that names the option, and never a traceback.  A usage error must be refused
before any work: the commands' ``run`` is replaced by one that fails the test.  Then the
cases that are found only while running (a run directory of the wrong kind, a damaged
checkpoint) must give exit status 1, in one line too.  Everything runs in-process.
"""

import argparse
import json
import math
import time

import numpy as np
import pytest

from minicrate import cli
from minicrate.core import checkpoint as ckpt
from minicrate.training import rundir

SECONDS = 10  # the most one case may take (a refused one takes milliseconds)


def _subparsers():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


PARSERS = _subparsers()
POSITIONALS = {"evaluate": ["CLS"], "measure": ["CLS"], "attention": ["CLS"], "reconstruct": ["MAE"],
               "sample": ["LM"], "grade": ["student.py"], "make-student": ["SRC", "DEST"]}
REQUIRED = {"compare": ["--data", "digits", "--out", "OUT"]}


def _base(command):
    return [command, *POSITIONALS.get(command, []), *REQUIRED.get(command, [])]


def _bad_values(checked):
    """Values ``checked`` (an argparse type of minicrate.commands.arguments) must refuse."""
    lo, hi = checked.lo, checked.hi
    if checked.kind == "integer":
        bad = ["abc", "1.5", "nan", "", "1e3", "0x10"]
        if lo is not None:
            bad += [str(lo - 1), str(lo - 10**6)]
        if hi is not None:
            bad += [str(hi + 1), "1" * 40]
        return bad
    bad = ["abc", "nan", "NaN", "inf", "-inf", "1e400", "-1e400", ""]
    if lo is not None:
        bad += [repr(lo) if checked.lo_open else repr(lo - 1), repr(lo - 1e6)]
    if hi is not None:
        bad += [repr(hi) if checked.hi_open else repr(hi + 1), "1e300"]
    return bad


def _option_cases():
    for command, parser in sorted(PARSERS.items()):
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            option = action.option_strings[-1]
            yield pytest.param(command, [option], option, id=f"{command} {option} (missing)")
            if getattr(action.type, "kind", None):
                for value in _bad_values(action.type):
                    yield pytest.param(command, [f"{option}={value}"], option,
                                       id=f"{command} {option}={value[:12]}")
            if action.choices:
                yield pytest.param(command, [f"{option}=bogus"], option, id=f"{command} {option}=bogus")


def _path_cases():
    """Paths of the wrong kind, and options that only fail together."""
    cases = []
    for command, parser in sorted(PARSERS.items()):
        for action in parser._actions:
            name = getattr(action.type, "__name__", "")
            option = action.option_strings[-1] if action.option_strings else action.dest
            if name == "out_dir":
                for bad in ("FILE", "FILE/under", "/", "/sys/minicrate", "/proc"):
                    cases.append((command, [f"{option}={bad}"], option))
            elif name == "figure_file":
                for bad in ("DIR", "OUT/figure.xyz", "OUT/figure", "FILE/figure.png", "/sys/a.png"):
                    cases.append((command, [f"{option}={bad}"], option))
            elif name == "out_file":
                cases += [(command, [f"{option}=DIR"], option), (command, [f"{option}=FILE/x"], option)]
    cases += [
        ("train", ["--shift", "100"], "--shift"),
        ("train", ["--data", "digits", "--shift", "8"], "--shift"),
        ("train-mae", ["--data", "digits", "--shift", "50"], "--shift"),
        ("train-lm", ["--min-lr", "1"], "--min-lr"),
        ("train-lm", ["--dim", "10", "--heads", "3"], "--heads"),
        ("train-lm", ["--context", "4096", "--batch-size", "100000"], "--context"),
        ("train", ["--resume", "--overwrite"], "--resume"),
        ("grade", ["--task", "99.9"], "--task"),
        ("train", ["--patch", "3"], "patch_size 3"),  # a model config the options cannot make
        ("train", ["--preset", "bogus"], "preset"),
        ("train-mae", ["--dim", "10"], "dim 10"),
    ]
    return [pytest.param(c, a, o, id=f"{c} {' '.join(a)}") for c, a, o in cases]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Stand-ins for the placeholders: checkpoints of each kind (headers only), a file, a folder."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "file.txt").write_text("not a folder\n")
    (root / "dir").mkdir()
    (root / "student.py").write_text("x = 1\n")
    (root / "src").mkdir()
    found = {"FILE": str(root / "file.txt"), "DIR": str(root / "dir"), "OUT": str(root / "out"),
             "student.py": str(root / "student.py"), "SRC": str(root / "src"),
             "DEST": str(root / "dest")}
    for kind, extra, config in (("CLS", {}, {"dim": 16}), ("LM", {"lm_config": {}}, None),
                                ("MAE", {"mae_config": {}}, None)):
        run = root / kind.lower()
        run.mkdir()
        ckpt.save(str(run / rundir.CHECKPOINT), {"w": np.zeros(2)}, config, extra)
        found[kind] = str(run)
    return found


def _fill(argv, places):
    out = []
    for arg in argv:
        head, eq, value = arg.partition("=")
        if eq:
            first, slash, rest = value.partition("/")
            if first in places:
                value = places[first] + slash + rest
            out.append(f"{head}={value}")
        else:
            first, slash, rest = arg.partition("/")
            out.append(places[first] + slash + rest if first in places else arg)
    return out


def _cli(argv, capsys):
    start = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    return code, err, seconds


def _one_line(err):
    text = err.strip()
    assert text and "\n" not in text and "Traceback" not in text, err
    return text


@pytest.fixture
def no_work(monkeypatch):
    """A usage error must be refused before any work: running a command fails the test."""

    def ran(args):
        raise AssertionError(f"{args.command} ran although its arguments are wrong")

    for module in cli._command_modules():
        monkeypatch.setattr(module, "run", ran)


@pytest.mark.parametrize(("command", "argv", "option"), [*_option_cases(), *_path_cases()])
def test_a_bad_option_is_one_line_and_exit_status_2(command, argv, option, places, capsys, no_work):
    code, err, seconds = _cli(_fill([*_base(command), *argv], places), capsys)
    line = _one_line(err)
    assert code == 2, line
    assert line.startswith(f"minicrate {command}: error: ") or line.startswith("minicrate: error: "), line
    assert option in line or option.lstrip("-") in line, line
    assert seconds < SECONDS


@pytest.mark.parametrize("command", sorted(c for c in PARSERS if POSITIONALS.get(c) or REQUIRED.get(c)))
def test_a_missing_argument_is_one_line_and_exit_status_2(command, capsys, no_work):
    code, err, _ = _cli([command], capsys)
    assert code == 2, _one_line(err)


@pytest.mark.parametrize("command", sorted(c for c, p in POSITIONALS.items() if p[0] in ("CLS", "LM", "MAE")))
def test_a_path_that_does_not_exist_is_a_usage_error(command, places, capsys, no_work):
    code, err, _ = _cli([command, places["OUT"] + "/missing"], capsys)
    assert code == 2 and "expected an existing run directory" in _one_line(err)


WRONG_KIND = [("evaluate", "LM", "language-model run"), ("evaluate", "MAE", "CRATE-MAE run"),
              ("measure", "LM", "language-model run"), ("attention", "MAE", "CRATE-MAE run"),
              ("sample", "MAE", "CRATE-MAE run"), ("sample", "CLS", "classifier run"),
              ("reconstruct", "CLS", "classifier run"), ("reconstruct", "LM", "language-model run")]


@pytest.mark.parametrize(("command", "kind", "named"), WRONG_KIND)
def test_a_run_of_the_wrong_kind_is_named_as_such(command, kind, named, places, capsys):
    code, err, seconds = _cli([command, places[kind]], capsys)
    line = _one_line(err)
    assert code == 1 and f"is a {named}" in line and f"'{command}' reads" in line, line
    assert seconds < SECONDS


@pytest.mark.parametrize("command", ["evaluate", "measure", "attention", "reconstruct", "sample"])
@pytest.mark.parametrize("what", ["FILE", "DIR"])
def test_a_path_that_holds_no_checkpoint_is_one_line_and_exit_status_1(command, what, places, capsys):
    code, err, _ = _cli([command, places[what]], capsys)
    assert code == 1, _one_line(err)


def test_debug_shows_the_traceback(places, capsys):
    with pytest.raises(ckpt.CheckpointError):
        cli.main(["evaluate", places["LM"], "--debug"])
    with pytest.raises(ckpt.CheckpointError):
        cli.main(["--debug", "evaluate", places["LM"]])


def test_an_unexpected_error_is_one_line_too(monkeypatch, capsys):
    from minicrate.commands import rates

    def broken(args):
        raise KeyError("eps")

    monkeypatch.setattr(rates, "run", broken)
    code, err, _ = _cli(["rates"], capsys)
    assert code == 1 and "'eps'" in _one_line(err)


def test_metrics_json_is_strict_json_after_a_divergence(tmp_path):
    path = tmp_path / "metrics.json"
    rundir.write_json(path, {"loss": math.nan, "history": [{"g": math.inf}, {"g": -math.inf}],
                             "ok": 1.5, "n": np.float64("nan")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "history": [{"g": None}, {"g": None}], "ok": 1.5, "n": None}


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_a_figure_is_written_in_the_format_its_name_says(tmp_path, suffix, magic):
    from minicrate.measure.plotting import figure, save_figure

    fig = figure(2, 2)
    fig.subplots().plot([0, 1])
    path = save_figure(fig, str(tmp_path / f"figure{suffix}"))
    assert open(path, "rb").read(len(magic)) == magic


def test_an_unknown_option_is_named_by_its_command(places, capsys, no_work):
    code, err, _ = _cli(["evaluate", places["CLS"], "--bogus", "3"], capsys)
    assert code == 2 and _one_line(err).startswith("minicrate evaluate: error: unrecognized arguments: --bogus 3")


def test_the_installed_command_line_exits_2_in_one_line(tmp_path):
    """The same through ``python -m minicrate``: stderr is exactly one line, stdout empty."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "minicrate", "train", "--epochs", "1" + "0" * 30,
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "argument --epochs: got '1000" in _one_line(result.stderr) and "<= 100,000" in result.stderr
    assert not (tmp_path / "run").exists()
