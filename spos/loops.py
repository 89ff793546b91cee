"""The training and evaluation loops every step shares (torchvision's train_one_epoch and evaluate)."""
import sys
import time

import torch

from spos.distributed import sum_over_processes
from spos.hardware import autocast
from utils import AverageMeter, accuracy, correct_counts, logger


def _progress(iterable, total, description, log_frequency):
    """A tqdm bar on a terminal (the caller refreshes its figures every ``log_frequency`` steps); otherwise
    (logs, CI) the caller logs a line every ``log_frequency`` steps."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True), True
    return iterable, False


def train_one_epoch(model, loader, criterion, optimizer, scheduler, epoch, num_epochs, log_frequency,
                    sample_architecture=None, autocast_dtype=None):
    """One pass over ``loader``. For a supernet, ``sample_architecture()`` gives each step's path; the
    blocks off that path get no gradient and so no update, momentum or weight decay at all. With
    ``autocast_dtype`` (bf16) the forward runs in it; weights, gradients and the update stay fp32."""
    model.train()
    steps = len(loader)
    batches, has_bar = _progress(loader, steps, f"epoch {epoch + 1}/{num_epochs}", log_frequency)
    start = time.perf_counter()
    images_seen = 0
    # loss and correct-prediction sums stay on the device: reading one waits for the GPU, so only logging does
    sums = None
    for step, (images, labels) in enumerate(batches):
        with autocast(images.device, autocast_dtype):
            if sample_architecture is None:
                output = model(images)
            else:
                output = model(images, sample_architecture())
            loss = criterion(output.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        n = labels.shape[0]
        images_seen += n
        step_sums = torch.cat([loss.detach().float().reshape(1) * n, correct_counts(output.detach(), labels)])
        sums = step_sums if sums is None else sums + step_sums
        if (step + 1) % log_frequency == 0 or step + 1 == steps:
            loss_avg, top1_avg, top5_avg = (sums / images_seen).tolist()
            speed = images_seen / (time.perf_counter() - start)
            lr = optimizer.param_groups[0]["lr"]
            if has_bar:
                batches.set_postfix(loss=f"{loss_avg:.3f}", top1=f"{top1_avg:.3f}", lr=f"{lr:.4f}",
                                    img_s=f"{speed:.0f}")
            else:
                logger.info("Epoch [%d/%d] Step [%d/%d]  loss %.4f  top1 %.4f  top5 %.4f  lr %.5f  %.0f img/s",
                            epoch + 1, num_epochs, step + 1, steps, loss_avg, top1_avg, top5_avg, lr, speed)
    elapsed = max(time.perf_counter() - start, 1e-9)
    totals = sums.tolist() if sums is not None else [0.0, 0.0, 0.0]
    loss_sum, top1_sum, top5_sum, count = sum_over_processes([*totals, images_seen])
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": top1_sum / count, "top5": top5_sum / count,
            "images_per_s": count / elapsed}


@torch.inference_mode()
def evaluate(model, loader, criterion, architecture=None, sample_architecture=None, autocast_dtype=None):
    """Loss and top-1/top-5 over every image of ``loader``; a supernet runs ``architecture`` or a path
    drawn by ``sample_architecture()`` for each batch."""
    model.eval()
    loss_meter, top1_meter, top5_meter = AverageMeter(), AverageMeter(), AverageMeter()
    for images, labels in loader:
        with autocast(images.device, autocast_dtype):
            if sample_architecture is not None:
                output = model(images, sample_architecture())
            elif architecture is not None:
                output = model(images, architecture)
            else:
                output = model(images)
        output = output.float()
        n = labels.shape[0]
        top1, top5 = accuracy(output, labels)
        loss_meter.update(criterion(output, labels).item(), n)
        top1_meter.update(top1, n)
        top5_meter.update(top5, n)
    loss_sum, top1_sum, top5_sum, count = sum_over_processes(
        [loss_meter.sum, top1_meter.sum, top5_meter.sum, loss_meter.count])
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": top1_sum / count, "top5": top5_sum / count, "images": int(count)}
