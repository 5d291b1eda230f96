"""Exercise 2 (ConvNeXt's building blocks): the grader's own calls.

q1 ``grouped_conv_params`` and q5 ``drop_path_rates`` are arithmetic, compared with the reference.
q2 ``LayerNorm2d`` and q4 ``ConvNeXtBlock`` are modules run with the grader's weights (the
reference's names are the docstrings': ``weight``/``bias``; ``dwconv``, ``norm``, ``pwconv1``,
``pwconv2``, ``layer_scale``). q3 ``drop_path`` is random: its deterministic cases (evaluation,
p = 0, p = 1, a p outside [0, 1]) are compared with the reference, and its random cases, drawn with
a seeded ``generator`` on the grading device, are checked for what the docstring promises (each
sample dropped or kept whole and rescaled by 1 / (1 - p), about a fraction p dropped, the same
seed giving the same draw and another seed another one), since a GPU's draw cannot be reproduced
on the grader's CPU and "keep when u < 1 - p" is not the only right way to draw.
"""
from __future__ import annotations

import math

import torch

from course_lib.models import ConvNeXt, ConvNeXtBlock, LayerNorm2d, conv_params
from course_lib.models.convnext import drop_path as reference_drop_path
from ..probe_types import (Call, ModuleCall, Raises, Satisfies, module_call, on_grid, random_input, random_int,
                        random_state)

#: Channels and sides of the modules' inputs stay small: weights and outputs travel as JSON.
MAX_CHANNELS, MAX_SIDE = 8, 7
#: drop_path's random cases: samples per batch, and how many standard deviations the dropped fraction
#: may stray from p (a right answer fails with probability ~1e-9 per case).
DROP_BATCH, DROP_SIGMAS = 400, 6.0
#: Kept samples of drop_path are x / (1 - p) up to float32 rounding.
DROP_RTOL = 1e-5
#: Scale of the depthwise weights in the ConvNeXtBlock case whose LayerNorm sees a tiny variance:
#: there eps (1e-6 inside the square root) changes the output by far more than the tolerance.
SMALL_SPREAD = 2.0 ** -10


def grouped_conv_params_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Random grouped convolutions, with and without bias; a plain and a depthwise one among them."""
    cases = [(1, 1, 1, 1), (7, 96, 96, 96)]
    for _ in range(6):
        groups = random_int(1, 64, generator)
        in_channels, out_channels = (groups * random_int(1, 16, generator) for _ in range(2))
        cases.append((random_int(1, 11, generator), in_channels, out_channels, groups))
    calls = []
    for kernel_size, in_channels, out_channels, groups in cases:
        bias = bool(random_int(0, 1, generator))
        args = (kernel_size, in_channels, out_channels, groups, bias)
        expected = conv_params(kernel_size, in_channels, out_channels, bias, groups=groups)
        calls.append(Call(question, "grouped_conv_params", args, expected))
    return calls


def layer_norm_calls(question: str, generator: torch.Generator) -> list[ModuleCall]:
    """One channel (the output is the bias), two channels (a biased variance shows), odd sizes, a
    tiny variance with the default eps and a small one with a given eps (where eps goes shows).
    Train and eval mode must agree."""
    cases = [  # (channels, eps or None for the default, input scale, input offset)
        (1, None, 1.0, 0.0),
        (2, None, 4.0, 1.0),
        (random_int(3, MAX_CHANNELS, generator), None, 3.0, 2.0),
        (random_int(2, MAX_CHANNELS, generator), None, SMALL_SPREAD, 0.0),
        (random_int(2, MAX_CHANNELS, generator), 1e-3, 0.03, 0.0),
    ]
    calls = []
    for channels, eps, scale, offset in cases:
        args = (channels,) if eps is None else (channels, eps)
        height, width = random_int(1, MAX_SIDE, generator), random_int(1, MAX_SIDE, generator)
        x = random_input((random_int(1, 2, generator), channels, height, width), generator, scale) + offset
        calls.append(module_call(question, "LayerNorm2d", args, LayerNorm2d(*args), (x,), generator,
                                 modes=("eval", "train")))
    return calls


def _nonzero_input(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values of magnitude 0.25 to 3.25 and random sign: a dropped sample is the only source of zeros."""
    magnitude = on_grid(0.25 + 3 * torch.rand(shape, generator=generator), 1 / 16)
    sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return magnitude * sign


def _random_p(generator: torch.Generator) -> float:
    """A drop probability in [0.1, 0.35] or [0.65, 0.9]: far from 0.5, where keeping with probability p
    instead of 1 - p, or dividing by p instead of 1 - p, would go unnoticed."""
    p = 0.1 + 0.25 * float(torch.rand(1, generator=generator))
    return round(p if random_int(0, 1, generator) else 1 - p, 2)


def _dropped_or_kept_whole(x: torch.Tensor, p: float) -> Satisfies:
    """drop_path(x, p, True, generator)'s promise: every sample all zeros, or x / (1 - p); about p of them dropped."""
    def check(y: torch.Tensor, earlier: list) -> str | None:
        flat_x, flat_y = x.reshape(len(x), -1).double(), y.reshape(len(x), -1).double()
        dropped = (flat_y == 0).all(dim=1)
        kept = torch.isclose(flat_y, flat_x / (1 - p), rtol=DROP_RTOL, atol=0.0).all(dim=1)
        if not bool((dropped | kept).all()):
            return "each sample should be dropped whole (all zeros) or kept whole and divided by 1 - p"
        fraction = dropped.double().mean().item()
        if abs(fraction - p) > DROP_SIGMAS * math.sqrt(p * (1 - p) / len(x)):
            return f"{fraction:.1%} of the samples were dropped with p = {p}"
        return None

    return Satisfies(like=x, check=check)


def _same_draw_as(index: int, x: torch.Tensor, p: float, same: bool) -> Satisfies:
    """The property of `_dropped_or_kept_whole`, and the same draw as call ``index`` (or another one)."""
    whole = _dropped_or_kept_whole(x, p).check

    def check(y: torch.Tensor, earlier: list) -> str | None:
        if same and not torch.equal(y, earlier[index]):
            return "the same seed gave another draw (draw the random numbers with the generator argument)"
        if not same and torch.equal(y, earlier[index]):
            return "another seed gave the same draw (draw the random numbers with the generator argument)"
        return whole(y, earlier)

    return Satisfies(like=x, check=check)


def drop_path_calls(question: str, generator: torch.Generator) -> list[Call]:
    """Evaluation, p = 0 and p = 1 (1-d to 5-d inputs), a p outside [0, 1], then random draws."""
    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(random_int(1, 2**31 - 1, generator))

    calls = []
    deterministic = [  # (shape, p, training); float32 only: some graders' devices have no float64
        ((random_int(1, 4, generator), 3, 2, 2), _random_p(generator), False),
        ((random_int(1, 6, generator),), 0.0, True),
        ((random_int(1, 4, generator), 3, 4), 1.0, True),
        ((2, 3, 2, 2, 3), 1.0, True),
        ((3, 5), 1.0, False),
    ]
    for shape, p, training in deterministic:
        x = random_input(shape, generator)
        # a generator of the grader's own keeps the reference's draw (p = 1) off the global random state
        expected = reference_drop_path(x, p, training, generator=torch.Generator().manual_seed(0))
        calls.append(Call(question, "drop_path", (x, p, training), expected))
    for p in (1.5, -0.25):
        calls.append(Call(question, "drop_path", (random_input((2, 3), generator), p), Raises("ValueError")))

    # each generator argument reaches the kernel as a new generator with the same seed
    x, p, draw = _nonzero_input((DROP_BATCH, 2), generator), _random_p(generator), seeded()
    first = len(calls)
    calls.append(Call(question, "drop_path", (x, p, True, draw), _dropped_or_kept_whole(x, p)))
    calls.append(Call(question, "drop_path", (x, p, True, draw), _same_draw_as(first, x, p, same=True)))
    calls.append(Call(question, "drop_path", (x, p, True, seeded()), _same_draw_as(first, x, p, same=False)))
    x, p = _nonzero_input((DROP_BATCH // 2, 1, 2, 1), generator), _random_p(generator)
    calls.append(Call(question, "drop_path", (x, p, True, seeded()), _dropped_or_kept_whole(x, p)))
    return calls


def convnext_block_calls(question: str, generator: torch.Generator) -> list[ModuleCall]:
    """Random weights (layer scale of order 1, so the branch shows) on odd sizes: the default block in
    eval and train mode (drop_prob 0); drop_prob 1 (train: only the shortcut; eval: everything);
    drop_prob in (0, 1) in eval mode; a tiny spread after the depthwise conv (LayerNorm's eps shows);
    and the layer scale's initial value."""
    def channels() -> int:
        return random_int(2, MAX_CHANNELS, generator)

    def image(c: int) -> torch.Tensor:
        return random_input((random_int(1, 2, generator), c, random_int(1, MAX_SIDE, generator),
                             random_int(1, MAX_SIDE, generator)), generator)

    calls = []
    cases = [  # (channels, layer_scale, drop_prob, modes, tiny spread after dwconv)
        (channels(), None, None, ("eval", "train"), False),
        (channels(), 1e-6, 1.0, ("eval", "train"), False),
        (channels(), 0.5, _random_p(generator), ("eval",), False),
        (channels(), None, None, ("eval",), True),
    ]
    for c, layer_scale, drop_prob, modes, tiny_spread in cases:
        args = (c,) if layer_scale is None else (c, layer_scale, drop_prob)
        reference = ConvNeXtBlock(*args[:2], drop_path=0.0 if drop_prob is None else drop_prob)
        state = random_state(reference, generator)
        if tiny_spread:
            state["dwconv.weight"] = state["dwconv.weight"] * SMALL_SPREAD
            state["dwconv.bias"] = torch.zeros_like(state["dwconv.bias"])
        calls.append(module_call(question, "ConvNeXtBlock", args, reference, (image(c),), modes=modes, state=state))
    for args in [(channels(),), (channels(), round(float(torch.rand(1, generator=generator)), 3) + 0.125)]:
        value = args[1] if len(args) > 1 else 1e-6  # the signature's default
        calls.append(ModuleCall(question, "ConvNeXtBlock", args, None, torch.full((args[0],), value),
                                read="layer_scale", atol=0.0, rtol=1e-6))
    return calls


def drop_path_rates_calls(question: str, generator: torch.Generator) -> list[Call]:
    """One block (rate 0.0), a zero maximum, ConvNeXt-T, random depths (a list once) and rates."""
    def random_rate() -> float:
        return round(0.9 * float(torch.rand(1, generator=generator)), 3)

    cases = [((1,), random_rate()), ((2, 2), 0.0), ((3, 3, 9, 3), 0.1)]
    for index in range(5):
        depths = tuple(random_int(1, 7, generator) for _ in range(random_int(1, 4, generator)))
        cases.append((list(depths) if index == 0 else depths, random_rate()))
    calls = []
    for depths, max_rate in cases:
        with torch.device("meta"):  # the reference network's structure holds the schedule
            network = ConvNeXt(tuple(depths), dims=(1,) * len(depths), num_classes=1, drop_path_rate=max_rate)
        expected = [block.drop_path.p for stage in network.stages for block in stage]
        calls.append(Call(question, "drop_path_rates", (depths, max_rate), expected))
    return calls


def calls(generator: torch.Generator) -> list[Call | ModuleCall]:
    return [
        *grouped_conv_params_calls("q1_tests", generator),
        *layer_norm_calls("q2_tests", generator),
        *drop_path_calls("q3_tests", generator),
        *convnext_block_calls("q4_tests", generator),
        *drop_path_rates_calls("q5_tests", generator),
    ]
