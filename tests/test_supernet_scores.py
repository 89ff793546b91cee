"""reproduction/supernet_scores.py: each score kept as soon as it is known, for its checkpoint, split and settings
only."""
import argparse
import os
import shutil

from reproduction import rank
from reproduction.supernet_scores import supernet_scores


def test_supernet_scores_are_kept_one_by_one_and_only_for_their_checkpoint_and_split(small_digits, digits_checkpoint,
                                                                                      tmp_path, capsys):
    """Each score is written as soon as it is known, so a rerun (after a kill between two scores too) scores only
    what it lacks; scores of another checkpoint or another held-out split are not reused."""
    checkpoint = shutil.copy(digits_checkpoint, tmp_path / "epoch_1.pth.tar")
    args = argparse.Namespace(imagenet_dir=str(small_digits), checkpoint=str(checkpoint), holdout_per_class=4,
                              tester_args="--input-size 32 --train-iters 1 --train-batch-size 32 --test-batch-size 100")
    architectures = rank.choose_architectures(3, 330e6, seed=0)
    cache = tmp_path / "supernet_scores.json"
    first, _ = supernet_scores(args, architectures[:2], cache)
    assert "0 of 2 known, 2 to score" in capsys.readouterr().err
    assert all(0 <= accuracy <= 1 for pair in first for accuracy in pair)
    again, _ = supernet_scores(args, architectures, cache)
    assert "2 of 3 known, 1 to score" in capsys.readouterr().err
    assert again[:2] == first
    args.holdout_per_class = 5  # scored on another held-out split: not the same scores
    supernet_scores(args, architectures[:1], cache)
    assert "0 of 1 known, 1 to score" in capsys.readouterr().err
    os.utime(checkpoint, ns=(0, 0))  # another checkpoint at that path
    supernet_scores(args, architectures[:1], cache)
    assert "0 of 1 known, 1 to score" in capsys.readouterr().err
    cache.write_text('{"key": ')  # damaged by hand: scored again, not a traceback
    supernet_scores(args, architectures[:1], cache)
    err = capsys.readouterr().err
    assert f"{cache}: unreadable (" in err and "0 of 1 known, 1 to score" in err
