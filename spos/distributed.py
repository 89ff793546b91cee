"""torchrun support for supernet.py and scratch.py: one process per GPU (NCCL) or per share of the CPU
(gloo). Without torchrun everything here is a no-op for a single process.

  torchrun --standalone --nproc_per_node 8 supernet.py --batch-size 1024 ...     # one machine
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id spos \
      supernet.py --batch-size 1024 ...                                           # each of two machines

``--batch-size`` is the global batch: each of N processes reads batch_size / N images a step from its own
shard of the data, so the learning rate (scaled to the global batch) means the same for any N.
"""
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from spos.processes import die_with_parent
from utils import UserError, logger


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def init(device):
    """Join torchrun's process group (if started by torchrun); ``device`` is what the user asked for
    (hardware.get_device): a GPU run takes the GPU of its local rank."""
    # torchrun starts each process in a session of its own, so a SIGKILL of torchrun (or of its process group) would
    # leave them training on, orphaned, into the checkpoints of the relaunched run
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun, even as its only process
        die_with_parent()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            f"lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        backend = "gloo"
    dist.init_process_group(backend)
    return Context(rank, world_size, local_rank, device)


def shutdown(context):
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch_size(batch_size, context):
    if batch_size % context.world_size:
        raise UserError(f"--batch-size {batch_size} is the global batch and must divide evenly among "
                        f"{context.world_size} processes")
    return batch_size // context.world_size


def wrap(model, context, supernet):
    """DistributedDataParallel over the processes. A supernet trains one path a step: every process runs
    the same path (see ``shared_draw``) and the blocks off it, unused everywhere, keep no gradient, so they
    get no update at all, as on one process."""
    if not context.enabled:
        return model
    # DDP copies each gradient into its bucket through a view with the parameter's strides. A channels-last
    # weight's gradient can come back with other strides, on its size-1 dimensions only (a 1x1 conv run as a
    # matrix multiply on a small map, a channel-search block's first channels): the same layout, copied at the
    # same cost (bench/bench_ddp_grad_copy.py: 1.00x), so DDP's warning about it says nothing to act on.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=supernet)


def shared_draw(sample_architecture, context):
    """A path sampler whose draw on rank 0 is used by every process (all draw, so their generators stay
    in step for --resume)."""
    if not context.enabled:
        return sample_architecture

    def draw():
        architecture = torch.tensor(sample_architecture(), dtype=torch.int64, device=_comm_device(context))
        dist.broadcast(architecture, src=0)
        return tuple(architecture.tolist())

    return draw


def broadcast_weights(model, context):
    """Every process takes rank 0's parameters and buffers (after work each did on its own data)."""
    if not context.enabled:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def check_same_parameters(model, context, when):
    """Every process must hold the same parameters (each applies the same update, from all-reduced gradients,
    to the same weights): compare a checksum of each process's with every other's, and stop with a clear error
    if they differ rather than train diverged copies on."""
    if not context.enabled:
        return
    with torch.no_grad():
        params = [p.detach().double() for p in model.parameters()]
        checksum = torch.stack([sum(p.sum() for p in params), sum(p.square().sum() for p in params)])
    checksum = checksum.to(_comm_device(context))
    lowest, highest = checksum.clone(), checksum.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    if not torch.equal(lowest, highest):
        raise RuntimeError(f"{when}: the {context.world_size} processes hold different weights (checksums "
                           f"{lowest.tolist()} to {highest.tolist()})")
    if context.is_main:
        logger.info("%s: the %d processes hold the same weights", when, context.world_size)


def barrier(context):
    if context.enabled:
        dist.barrier()


def sum_over_processes(values):
    """Sums across torchrun's processes (each evaluated its own shard); the values themselves otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _comm_device(context):
    return context.device if context.device.type == "cuda" else torch.device("cpu")
