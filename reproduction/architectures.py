"""The architectures the reproduction compares (SPEC sections 14 and 16): the search's answer and its next best, the
four one-choice networks with their middle channels scaled to the answer's FLOPs (within 2 %, as the paper's table
sets them beside the searched network), and architectures drawn at random in the FLOPs band of the search's
answers, so that FLOPs alone decide nothing."""
from network import CHANNEL_SCALES, NUM_LAYERS, UNSCALED, paper_flops
from spos.scoring import random_legal_paths
from spos.search_state import genes_of
from utils import UserError

ONE_CHOICE_NAMES = ("all Shuffle 3x3", "all Shuffle 5x5", "all Shuffle 7x7", "all Xception")
RANDOM = "random in the band"
FLOPS_TOLERANCE = 0.02  # the one-choice networks' FLOPs, a fraction of the answer's


def best_candidates(state, count):
    """The search's ``count`` best distinct scored candidates, best first (ties: the first generated)."""
    best = []
    for record in sorted((r for r in state["history"] if r["accuracy"] is not None), key=lambda r: -r["accuracy"]):
        genes = genes_of(record)
        if genes not in best:
            best.append(genes)
    if len(best) < count:
        raise UserError(f"the search scored only {len(best)} distinct candidates; --next-best needs {count}")
    return best[:count]


def flops_band(flops, limit, width):
    """[low, high] holding ``flops``, at least ``width * limit`` wide, not above ``limit``."""
    low, high = min(flops), max(flops)
    missing = max(0.0, width * limit - (high - low))
    high = min(limit, high + missing / 2)
    return max(0.0, min(low - missing / 2, high - width * limit)), high


def matched_widths(block, target, tolerance=FLOPS_TOLERANCE):
    """The one-choice network of ``block`` in every layer, its middle channels scaled (the channel search's scales,
    CHANNEL_SCALES) so that its FLOPs lie within ``tolerance`` of ``target``: every layer at the one scale that comes
    nearest, then layers moved one scale up or down, the smallest move first and no layer twice before every layer
    once, so that the widths stay as even as they can. Returns its 40 genes."""
    def flops(scales):
        return paper_flops((block,) * NUM_LAYERS + tuple(scales))

    scales = [min(range(len(CHANNEL_SCALES)), key=lambda s: abs(flops((s,) * NUM_LAYERS) - target))] * NUM_LAYERS
    moved = [0] * NUM_LAYERS
    while abs(flops(scales) - target) > tolerance * target:
        step = 1 if flops(scales) < target else -1
        layers = [layer for layer in range(NUM_LAYERS) if 0 <= scales[layer] + step < len(CHANNEL_SCALES)]
        if not layers:
            raise UserError(f"no widths of the {ONE_CHOICE_NAMES[block]} network come within {tolerance:.0%} of "
                            f"{target / 1e6:.1f}M FLOPs (nearest: {flops(scales) / 1e6:.1f}M)")
        fewest = min(moved[layer] for layer in layers)

        def change(layer):
            return abs(flops(scales[:layer] + [scales[layer] + step] + scales[layer + 1:]) - flops(scales))

        layer = min((layer for layer in layers if moved[layer] == fewest), key=change)
        scales[layer] += step
        moved[layer] += 1
    return (block,) * NUM_LAYERS + tuple(scales)


def one_choice(block, channel_search):
    """The plain one-choice network of ``block`` (every middle width 1.0), in the supernet's genes."""
    return (block,) * NUM_LAYERS + ((UNSCALED,) * NUM_LAYERS if channel_search else ())


def choose(searched, one_choice_blocks, random_count, band_width, limit, seed, channel_search):
    """(name, role, genes) of every architecture compared, and the random ones' FLOPs band: ``searched`` (the
    answer, then the next best), the one-choice networks of ``one_choice_blocks`` at the answer's FLOPs, and
    ``random_count`` drawn uniformly (``seed``) among the legal ones in the band of the searched ones."""
    chosen = [("answer", "search's answer", searched[0])]
    chosen += [(f"next_best{i}", f"search's #{i + 1}", genes) for i, genes in enumerate(searched[1:], 1)]
    answer_flops = paper_flops(searched[0])
    chosen += [(f"one_choice{block}", ONE_CHOICE_NAMES[block], matched_widths(block, answer_flops))
               for block in one_choice_blocks]
    low, high = flops_band([paper_flops(genes) for genes in searched], limit, band_width)
    taken = {genes for _, _, genes in chosen}
    pool = random_legal_paths(random_count + len(taken), high, seed, channel_search, min_flops=low)
    drawn = [genes for genes in pool if genes not in taken][:random_count]
    chosen += [(f"random{i:02d}", RANDOM, genes) for i, genes in enumerate(drawn, 1)]
    return chosen, (low, high)
