"""The DeepSpeed engine around an SN-Net, correct when ranks train different stitch configs.

SN-Net samples a config per rank and step, so in one step the ranks run different paths and
each leaves some parameters without a gradient. DeepSpeed copes with that differently per stage
(measured on deepspeed 0.19.8, 2 ranks, gloo):

- ZeRO-0 all-reduces every parameter in a fixed order after the backward pass and fills missing
  gradients with zeros: correct as is (but nothing overlaps the backward pass).
- ZeRO-1/2 reduce gradients bucket by bucket in the order their hooks fire during the backward
  pass (with `overlap_comm` while the backward pass still runs). Different paths fire in
  different orders and leave different parameters out, so the ranks' collectives do not match:
  a crash ('Received data size doesn't match expected size'), or parameters that stay identical
  across ranks but were updated with mixed-up gradients.
- ZeRO-3 gathers parameters module by module during the forward pass: ranks must run the same
  path, so it requires the synchronized sampler (`DeepSpeedConfig.check_sampler`). It also keeps
  a parameter's gradient partition from the last step that used it and applies it again at
  every later step that does not: `optimizer_step` zeroes the partitions after each optimizer
  step through DeepSpeed's public `safe_set_local_grad`.

**Global release order (ZeRO-1/2, per-rank configs).** The samplers are seeded, so every rank
knows every rank's config of a micro-step (`sampler.assignment(step)`). `GlobalOrderGradients`
takes that list (`select(engine, cfg, every_rank)`) and reads each parameter of the *union* of
those paths through a small autograd node; the nodes form a chain in one fixed global order
(the anchors' output side first, as a backward pass produces gradients). A node passes its
parameter's gradient on (zeros when this rank's path did not use it) only once its own gradient
is complete *and* the node before it in the chain has passed its gradient on. So on every rank
DeepSpeed's gradient hooks fire for the same parameters in the same order, and they fire during
the backward pass, as soon as the order allows: DeepSpeed's own buckets (`overlap_comm`) reduce
while the rest of the backward runs. This is DDP's reducer with `find_unused_parameters`
(union, zeros for the unused) expressed as autograd dependencies rather than a second
reducer; DeepSpeed is driven through its public hooks only. Parameters on no rank's path get no
gradient on any rank (DeepSpeed treats them alike everywhere). The result is exactly the
average of the ranks' gradients (tested against a single-process reference).

    engine = build_engine(snnet, optimizer, scheduler, DeepSpeedConfig(zero_stage=2), synchronized=False)
    select(engine, sampler.sample(step), sampler.assignment(step))   # this rank's config, every rank's
    loss = criterion(engine(images), targets, images)
    engine.backward(loss)
    optimizer_step(engine)                  # engine.step(); True when the optimizer stepped
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from snnet_ray.train.deepspeed_config import DeepSpeedConfig

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

__all__ = [
    "GlobalOrderGradients",
    "build_engine",
    "device_type",
    "needs_ordered_gradients",
    "optimizer_step",
    "release_order",
    "select",
    "unwrap",
]


def needs_ordered_gradients(zero_stage: int, synchronized: bool) -> bool:
    """Whether ranks on different paths need `GlobalOrderGradients` (ZeRO-1/2 with a per-rank sampler)."""
    return zero_stage in (1, 2) and not synchronized


def build_engine(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: DeepSpeedConfig,
    synchronized: bool,
    world_size: int | None = None,
) -> DeepSpeedEngine:
    """`deepspeed.initialize` with the DeepSpeed config of `config` for this cluster.

    Call inside a Ray Train worker (torch.distributed is already initialised there; DeepSpeed
    reuses its process group). `synchronized` says whether all ranks run the same config each
    micro-step (the sampler's `synchronized`); ZeRO-3 requires it. The scheduler is stepped by
    the engine after every optimizer step and saved in its checkpoints.
    """
    import deepspeed

    from snnet_ray import collectives

    if config.zero_stage == 3 and not synchronized:
        raise ValueError(
            "deepspeed.zero_stage=3 requires a synchronized sampler (every rank on the same config); "
            "use sampler.name='synchronized' or ZeRO stage 0-2"
        )
    if world_size is None:
        world_size = collectives.world_size()
    module = GlobalOrderGradients(model) if needs_ordered_gradients(config.zero_stage, synchronized) else model
    engine, *_ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=config.to_dict(world_size, device_type(), num_parameters=_count(model)),
    )
    return engine


def select(engine_or_module: Any, config_id: int, every_rank: Sequence[Hashable] | None = None) -> None:
    """Make the SNNet run `config_id` next; `every_rank` lists every rank's config of this micro-step
    (`sampler.assignment(step)`), so that `GlobalOrderGradients` reduces the union of those paths only.

    Without `every_rank` every parameter is reduced (still exact, more zeros to send).
    """
    module = getattr(engine_or_module, "module", engine_or_module)
    unwrap(module).select(config_id)
    if isinstance(module, GlobalOrderGradients):
        boundary = getattr(engine_or_module, "is_gradient_accumulation_boundary", lambda: True)()
        module.plan(every_rank, last_of_step=boundary)


def optimizer_step(engine: DeepSpeedEngine) -> bool:
    """`engine.step()` after each micro-batch's backward; True when it stepped the optimizer.

    Use it instead of `engine.step()`: under ZeRO-3 it clears the gradient partitions after the
    optimizer step (DeepSpeed's public `safe_set_local_grad`), so a parameter the next steps'
    paths do not use gets a zero gradient instead of its stale one (DeepSpeed 0.19 keeps it).
    """
    boundary = engine.is_gradient_accumulation_boundary()
    engine.step()
    if boundary and engine.zero_optimization_stage() == 3:
        from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

        for p in engine.module.parameters():
            if p.requires_grad:
                grad = safe_get_local_grad(p)
                if grad is not None:
                    safe_set_local_grad(p, torch.zeros_like(grad))
    return boundary


def unwrap(engine_or_module: Any) -> nn.Module:
    """The user's model inside a DeepSpeed engine and/or `GlobalOrderGradients`."""
    module = getattr(engine_or_module, "module", engine_or_module)
    return module.model if isinstance(module, GlobalOrderGradients) else module


def device_type() -> str:
    """'cuda', 'cpu', ...: the accelerator DeepSpeed runs on (its bf16 and comm backend follow it)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def release_order(model: nn.Module) -> list[str]:
    """Trainable parameter names of an SNNet in the global release order (see the module docstring).

    Pieces are ordered by relative depth from the output down (final norm and head first, the
    embedding last; blocks of anchors of different depths interleave by relative depth, which is
    how stitch positions map blocks), the larger anchor first at equal depth; a stitching layer
    sits just above its front cut. Inside a piece, parameters come in reverse definition order
    (the order a backward pass completes them). Any order is correct; this one lets the release
    follow most paths' backward passes closely, so little waits.
    """
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    keyed: list[tuple[float, int, int, str]] = []
    anchors = getattr(model, "anchors", None)
    if anchors is None:  # not an SNNet: reverse definition order
        return list(reversed(names.values()))
    for a, anchor in enumerate(anchors):
        depth = _relative_depths(anchor)
        for piece, params in anchor.piece_parameters().items():
            for k, p in enumerate(params):
                if id(p) in names:
                    keyed.append((depth[piece], a, k, names[id(p)]))
    for spec, layer in zip(model.layer_specs, model.stitch_layers):
        j = min(pos[0] for pos in spec.positions)
        at = _relative_depths(anchors[spec.front])[f"block.{spec.stage}.{j}"] + 1e-6
        for k, p in enumerate(layer.parameters()):
            if id(p) in names:
                keyed.append((at, -1, k, names[id(p)]))
    seen = {n for *_, n in keyed}
    rest = [(-1.0, -2, k, n) for k, n in enumerate(names.values()) if n not in seen]
    keyed.sort(key=lambda t: (t[0], t[1], t[2]), reverse=True)
    return [n for *_, n in keyed + rest]


class GlobalOrderGradients(nn.Module):
    """Runs `model` with the parameters of this micro-step's paths read through one chain of
    autograd nodes in `release_order`, so gradient hooks fire alike on every rank (module docstring).

    The link of a parameter is made when the forward pass first reaches the piece (block,
    stitching layer, downsample, final norm or head) that owns it: autograd runs ready nodes
    newest first, so a link made at the start of the forward pass would wait behind every other
    node of the backward pass, and the whole release with it. Pieces are swapped in and out by
    forward hooks on the pieces themselves, so a piece's compiled `forward` sees plain tensors.

    State dicts are the wrapped model's own (no prefix), so DeepSpeed checkpoints load into the
    bare model and vice versa. `plan(every_rank)` before each forward names the configs of every
    rank; without one, every trainable parameter is in the chain.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._order = release_order(model)
        self._position_of = {n: i for i, n in enumerate(self._order)}
        self._params = dict(model.named_parameters())
        self._positions_of_config: dict[int, frozenset[int]] = {}
        self._plan: set[int] | None = set()
        self._last_of_step = True
        self._chain: _Chain | None = None
        # (owner module, attribute, full name) of every trainable parameter, by piece
        slots = {id(p): (owner, leaf, f"{prefix}.{leaf}" if prefix else leaf)
                 for prefix, owner in model.named_modules() for leaf, p in owner._parameters.items()
                 if p is not None and p.requires_grad}
        covered: set[int] = set()
        for piece in _pieces(model):
            piece_slots = [slots[id(p)] for p in piece.parameters() if id(p) in slots and id(p) not in covered]
            covered.update(id(p) for p in piece.parameters())
            if piece_slots:
                piece.register_forward_pre_hook(functools.partial(self._enter_piece, piece_slots))
                piece.register_forward_hook(functools.partial(self._leave_piece, piece_slots), always_call=True)
        self._loose = [slot for key, slot in slots.items() if key not in covered]

    def plan(self, every_rank: Sequence[Hashable] | None, last_of_step: bool = True) -> None:
        """The configs every rank runs in the next forward (None: all parameters).

        Plans add up over the micro-steps of one optimizer step (gradient accumulation), until
        the one marked `last_of_step`: ZeRO-1 reduces the gradients accumulated over the step at
        its last micro-step, through the hooks that fire then, so that micro-step must release
        every parameter any rank used in the whole step.
        """
        if self._last_of_step:
            self._plan = set()
        self._last_of_step = last_of_step
        if every_rank is None or self._plan is None:
            self._plan = None
        else:
            self._plan.update(int(c) for c in every_rank)

    def chained_names(self, plan: Sequence[Hashable] | None = None) -> list[str]:
        """Parameter names in the chain for `plan` (default: the current plan), in release order."""
        key = self._plan if plan is None else {int(c) for c in plan}
        if key is None or (plan is None and not key):
            return self._order
        used: set[int] = set()
        for cfg_id in key:
            if cfg_id not in self._positions_of_config:
                ids = {id(p) for m in _config_parts(self.model, cfg_id) for p in m.parameters()}
                self._positions_of_config[cfg_id] = frozenset(
                    self._position_of[n] for n, p in self._params.items() if id(p) in ids and n in self._position_of
                )
            used |= self._positions_of_config[cfg_id]
        return [self._order[i] for i in sorted(used)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        names = self.chained_names()
        if self._last_of_step:
            self._plan = set()  # the step's plan is spent: a forward without a new plan releases everything
        if not names or not torch.is_grad_enabled():
            return self.model(*args, **kwargs)
        chain = _Chain(names, self._params)
        self._chain = chain
        # Parameters no piece owns (ViT's class token and position embedding) are read by the
        # anchor's embedding outside any piece's forward: linked now (they are released last).
        loose = [slot for slot in self._loose if slot[2] in chain.position]
        try:
            _swap_in(chain, loose)
            out = self.model(*args, **kwargs)
            chain.link_down_to(0)
            return _Attach.apply(out, chain.token)
        finally:
            _swap_out(self._params, loose)
            self._chain = None

    def _enter_piece(self, slots: list[tuple[nn.Module, str, str]], module: nn.Module, args: Any) -> None:
        if self._chain is not None:
            _swap_in(self._chain, slots)

    def _leave_piece(self, slots: list[tuple[nn.Module, str, str]], module: nn.Module, args: Any, out: Any) -> None:
        if self._chain is not None:
            _swap_out(self._params, slots)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


class _Chain:
    """The links of one forward pass, made from the end of the release order towards its start."""

    def __init__(self, names: list[str], params: dict[str, nn.Parameter]) -> None:
        self.names, self.params = names, params
        self.position = {n: i for i, n in enumerate(names)}
        self.gated: dict[str, torch.Tensor] = {}
        self.next = len(names) - 1
        self.token = torch.zeros((), device=params[names[-1]].device)

    def link_down_to(self, index: int) -> None:
        """Make the links of release positions `next` down to `index`: link k consumes link k+1's
        token, so in the backward pass link k+1 runs only after link k has."""
        while self.next >= index:
            name = self.names[self.next]
            self.token, self.gated[name] = _Link.apply(self.token, self.params[name])
            self.next -= 1


def _swap_in(chain: _Chain, slots: list[tuple[nn.Module, str, str]]) -> None:
    wanted = [chain.position[full] for _, _, full in slots if full in chain.position]
    if not wanted:
        return
    chain.link_down_to(min(wanted))
    for owner, leaf, full in slots:
        if full in chain.gated:
            owner._parameters[leaf] = chain.gated[full]  # a plain tensor where the Parameter was


def _swap_out(params: dict[str, nn.Parameter], slots: list[tuple[nn.Module, str, str]]) -> None:
    for owner, leaf, full in slots:
        owner._parameters[leaf] = params[full]


def _pieces(model: nn.Module) -> list[nn.Module]:
    """The modules whose parameters are swapped in when they run: blocks, downsamples, final norm
    and head, stitching layers (an SNNet's pieces); any other model: its top-level children."""
    anchors = getattr(model, "anchors", None)
    if anchors is None:
        return list(model.children())
    pieces: list[nn.Module] = []
    for anchor in anchors:
        for s in range(anchor.num_stages):
            pieces += anchor.enter_modules(s)
            pieces += list(anchor.stage_blocks(s))
        pieces += anchor.finish_modules()
    pieces += list(model.stitch_layers)
    return pieces


class _Link(torch.autograd.Function):
    """Identity on one parameter; its backward hands the parameter's gradient on (zeros when the
    path did not use it) once the previous link has, then lets the next link go."""

    @staticmethod
    def forward(ctx: Any, token: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return token.clone(), param.view_as(param)

    @staticmethod
    def backward(ctx: Any, token_grad: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return token_grad, grad


class _Attach(torch.autograd.Function):
    """The model's output, with the chain's first link hung on it (its backward starts the chain)."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, grad.new_zeros(())


def _config_parts(model: nn.Module, cfg_id: int) -> list[nn.Module]:
    """Every module a config runs: embedding, blocks, stitching layer, final norm and head."""
    cfg = model.configs[cfg_id]
    if cfg.is_anchor:
        return [model.anchors[cfg.anchors[0]]]
    from snnet_ray.stitching.cost import path_pieces

    (front, back), (j, l) = cfg.anchors, cfg.positions[0]
    parts: list[nn.Module] = [model.stitch_layers[cfg.layer]]
    for anchor, block, side in ((front, j, "front"), (back, l, "back")):
        pieces = model.anchors[anchor].piece_parameters()
        parts += [_ParamHolder(pieces[k]) for k in path_pieces(model.anchors[anchor], cfg.stage, block, side)]
    return parts


class _ParamHolder:
    """A list of parameters seen through `.parameters()`, like a module's."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self._params = params

    def parameters(self) -> list[nn.Parameter]:
        return self._params


def _relative_depths(anchor: nn.Module) -> dict[str, float]:
    """Piece key -> relative depth in [0, 1]: embedding 0, blocks evenly, final norm and head 1."""
    depths = anchor.stage_depths
    total = sum(depths) + 1
    out = {"embed": 0.0, "finish": 1.0}
    start = 0
    for s, d in enumerate(depths):
        out[f"enter.{s}"] = (start + 0.5) / total
        for i in range(d):
            out[f"block.{s}.{i}"] = (start + i + 1) / total
        start += d
    return out


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
