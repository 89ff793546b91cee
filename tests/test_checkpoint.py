"""spos/checkpoint.py: which weights file a user's --checkpoint means, the network options it records, and the
state written before each epoch's weights (tests/test_resume.py kills runs between and inside those writes)."""
import pytest
import torch

import network
from spos import checkpoint
from utils import UserError


def test_a_folder_means_its_newest_epoch_and_a_file_itself(tmp_path):
    for epoch in (2, 10, 9):
        (tmp_path / f"epoch_{epoch}.pth.tar").write_bytes(b"")
    (tmp_path / "training_state.pth.tar").write_bytes(b"")
    assert checkpoint.find_checkpoint(str(tmp_path)) == str(tmp_path / "epoch_10.pth.tar")
    assert checkpoint.find_checkpoint(str(tmp_path / "epoch_2.pth.tar")) == str(tmp_path / "epoch_2.pth.tar")


def test_no_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no epoch_N.pth.tar inside \\(train the supernet first"):
        checkpoint.find_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="missing.pth.tar: checkpoint not found"):
        checkpoint.find_checkpoint(str(tmp_path / "missing.pth.tar"))


def test_the_weights_record_the_options_the_network_is_rebuilt_with(tmp_path):
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10, channel_search=True)
    checkpoint.save_weights(str(tmp_path), 3, model.state_dict(), model.options())
    path = checkpoint.find_checkpoint(str(tmp_path))
    assert path.endswith("epoch_3.pth.tar")
    assert checkpoint.checkpoint_options(path) == model.options()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "official.pth.tar")  # Megvii's record none
    assert checkpoint.checkpoint_options(str(tmp_path / "official.pth.tar")) == {}


def test_a_state_is_resumed_only_for_the_run_that_wrote_it(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state_path = tmp_path / checkpoint.STATE_FILE
    checkpoint.save_training_state(str(state_path), 1, model, optimizer, scheduler, extra={"--batch-size": 64})
    with pytest.raises(UserError, match="was written for --batch-size 64, not 128; resume with the arguments"):
        checkpoint.resume_training(str(tmp_path), checkpoint.STATE_FILE, 2, model, optimizer, scheduler,
                                   expect={"--batch-size": 128})
    state = checkpoint.resume_training(str(tmp_path), checkpoint.STATE_FILE, 2, model, optimizer, scheduler,
                                       expect={"--batch-size": 64})
    assert state["epoch"] == 1
    assert (tmp_path / "epoch_1.pth.tar").exists()  # the weights a kill kept it from writing, written again
