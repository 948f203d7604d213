"""The command line end to end on the micro world and toy checkpoints; bad input exits 2 with one clear line."""

from __future__ import annotations

import json

import pytest

from mechunlearn.cli import main


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "unlearn" in capsys.readouterr().out


def test_world_build_and_unknown_size(tmp_path, capsys):
    assert main(["world", "build", "--size", "micro", "--seed", "3", "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "manifest.json").is_file()
    assert json.loads(capsys.readouterr().out)["facts"] > 0
    assert main(["world", "build", "--size", "huge", "--out", str(tmp_path / "x")]) == 2
    assert "huge" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_info(toy_model_dir, capsys):
    assert main(["info", str(toy_model_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert '"n_layers": 3' in out and "blocks.0.mlp.hook_post" in out


def test_info_bad_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unlearn_list(capsys):
    assert main(["unlearn", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ga_simple", "npo", "rmu", "cb_lat", "wt_dist_reg", "whp"):
        assert name in out


def test_unlearn_errors(tmp_path, toy_model_dir, capsys):
    assert main(["unlearn", "forgetful", "--model", str(toy_model_dir)]) == 2
    assert "known methods" in capsys.readouterr().err
    forget = tmp_path / "forget.txt"
    forget.write_text("")
    assert main(["unlearn", "ga", "--model", str(toy_model_dir), "--forget", str(forget)]) == 2
    assert "empty" in capsys.readouterr().err
    forget.write_text("some text\n")
    assert main(["unlearn", "npo", "--model", str(toy_model_dir), "--forget", str(forget), "--beta", "abc"]) == 2
    assert "beta" in capsys.readouterr().err
    assert main(["unlearn", "rmu", "--model", str(toy_model_dir), "--forget", str(forget), "--retain", str(forget),
                 "--layer-ids", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_unlearn_and_eval_on_files(tmp_path, toy_model_dir, toy_texts, capsys):
    forget_texts, retain_texts = toy_texts
    (tmp_path / "f.txt").write_text("\n".join(forget_texts))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in retain_texts))
    code = main(["unlearn", "ga", "--model", str(toy_model_dir), "--forget", str(tmp_path / "f.txt"), "--retain",
                 str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"), "--max-steps", "2", "--lr", "1e-3",
                 "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert "forget_nll" in printed["metrics"] and "ga__" in printed["run"]


@pytest.mark.parametrize("command", [["unlearn", "ga"], ["eval", "x"], ["diagnose", "--base", "a", "--other", "b"],
                                     ["attack", "relearn", "--model", "x"], ["info", "x"], ["generate", "--prompt", "hi", "x"]])
def test_commands_that_load_a_checkpoint_take_allow_download(command):
    from mechunlearn.cli import build_parser

    args, _ = build_parser().parse_known_args([*command, "--allow-download"])
    assert args.allow_download is True
