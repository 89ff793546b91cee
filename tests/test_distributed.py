"""torchrun with 2 gloo processes on CPU: supernet.py and scratch.py on digits, and the DDP invariants."""
import json
import os
import subprocess
import sys
import textwrap

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

RANK_SCRIPT = textwrap.dedent("""
    import json, os, random, sys
    import torch
    sys.path.insert(0, {repo!r})
    import distributed
    from dataloader import ImageFolderLoader
    from network import FlopsBinnedSampler, ShuffleNetV2OneShot
    from hardware import get_device
    from optim import make_optimizer

    context = distributed.init(get_device("cpu"))
    torch.manual_seed(0)
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10)
    # each rank draws from a differently seeded generator: only the broadcast can make the paths agree
    sample = distributed.shared_draw(FlopsBinnedSampler(model, random.Random(context.rank)), context)
    ddp = distributed.wrap(model, context, supernet=True)
    optimizer = make_optimizer(model, 0.1, 0.9, 4e-5)
    loader = ImageFolderLoader({data!r}, "train", train=True, batch_size=16, input_size=32, workers=1,
                               backend="torch", shard_id=context.rank, num_shards=context.world_size)
    paths, labels_seen = [], []
    for step, (images, labels) in enumerate(loader):
        if step == 3:
            break
        path = sample()
        paths.append(path)
        labels_seen.append(labels.tolist())
        loss = torch.nn.functional.cross_entropy(ddp(images, path), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), os.path.join({out!r}, f"rank{{context.rank}}.pt"))
    with open(os.path.join({out!r}, f"rank{{context.rank}}.json"), "w") as f:
        json.dump({{"paths": paths, "labels": labels_seen}}, f)
    distributed.shutdown(context)
""")


def run_torchrun(args, tmp_path, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(TORCHRUN + args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_ranks_share_paths_and_weights(digits_dir, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(repo=REPO, data=digits_dir, out=str(tmp_path)))
    run_torchrun([str(script)], tmp_path)
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert ranks[0]["paths"] == ranks[1]["paths"]
    assert ranks[0]["labels"] != ranks[1]["labels"]  # each process read its own shard
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    # parameters agree exactly; BN running statistics are each process's own until DDP's next broadcast
    for name in (n for n in weights[0] if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))):
        assert torch.equal(weights[0][name], weights[1][name]), name
    # blocks off every sampled path kept their initial weights on both ranks
    torch.manual_seed(0)
    from network import ShuffleNetV2OneShot
    initial = ShuffleNetV2OneShot(input_size=32, n_classes=10).state_dict()
    used = {(layer, choice) for path in ranks[0]["paths"] for layer, choice in enumerate(path)}
    for layer in range(20):
        for choice in range(4):
            if (layer, choice) not in used:
                key = f"features.{layer}.{choice}.branch_main.0.weight"
                assert torch.equal(weights[0][key], initial[key]), key


def test_supernet_and_scratch_under_torchrun(digits_dir, tmp_path):
    out = tmp_path / "supernet"
    log = run_torchrun([os.path.join(REPO, "supernet.py"), "--imagenet-dir", digits_dir, "--input-size", "32",
                        "--batch-size", "64", "--epochs", "1", "--workers", "1", "--output-dir", str(out)], tmp_path)
    assert "2 process(es)" in log
    assert log.count("Epoch [1/1] done") == 1  # rank 0 alone logs
    assert "(300 images)" in log  # every val image counted once across the two shards
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth.tar")) == ["epoch_1.pth.tar",
                                                                          "training_state.pth.tar"]

    log = run_torchrun([os.path.join(REPO, "supernet.py"), "--imagenet-dir", digits_dir, "--input-size", "32",
                        "--batch-size", "64", "--epochs", "2", "--workers", "1", "--output-dir", str(out),
                        "--resume"], tmp_path)
    assert "1 of 2 epochs done" in log and "Epoch [2/2] done" in log

    out = tmp_path / "scratch"
    log = run_torchrun([os.path.join(REPO, "scratch.py"), "--fixed-arc", os.path.join(REPO, "architecture_final.json"),
                        "--imagenet-dir", digits_dir, "--input-size", "32", "--batch-size", "64", "--epochs", "1",
                        "--workers", "1", "--output-dir", str(out), "--tb-dir", str(tmp_path / "runs")], tmp_path)
    assert "2 process(es)" in log
    assert log.count("Epoch [1/1] done") == 1
    assert os.path.exists(out / "epoch_1.pth.tar")
    assert len(os.listdir(tmp_path / "runs")) == 1  # one TensorBoard event file: rank 0's
