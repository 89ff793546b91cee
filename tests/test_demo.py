"""`make demo`'s path, reduced: real DALI, real nnictl, every step, and nothing left running."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reduced_demo_runs_every_step_and_stops_the_experiment(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run([sys.executable, "demo.py", "--supernet-epochs", "1", "--scratch-epochs", "2",
                             "--search-rounds", "2", "--search-population", "3", "--output-dir", str(out),
                             "--search-timeout", "600"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1200)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    experiment = re.search(r"stopped NNI experiment (\w+)", log).group(1)
    summary = log[log.index("=== summary"):]
    assert "candidates evaluated                          6" in summary
    for key in ("supernet accuracy on random paths", "best architecture", "its accuracy trained from scratch",
                "time: total"):
        assert key in summary
    assert (out / "search.png").stat().st_size > 10_000
    table = out / "nni-experiments" / experiment / "log" / "checkpoints" / "candidates.csv"
    assert len(table.read_text().strip().splitlines()) == 1 + 6
    listed = subprocess.run(["nnictl", "experiment", "list"], cwd=REPO, env=env, capture_output=True, text=True)
    assert experiment not in listed.stdout  # only running experiments are listed
