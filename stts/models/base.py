"""`VideoClassifier`: what every stts backbone shares, the classifier interface and the selection surface.

    logits = model(x)                                    # x (B, C_in, T, H, W) -> (B, num_classes)
    logits, kept = model(x, return_selections=True)      # kept: {"T0": Selection, ...}
    model.selection_dim(4), model.grid_before(4)         # channels and (T, H, W) grid entering place 4
    model.grid_at(spec)                                  # the (T, H, W) map that selector is given
    model.check_selection(spec)                          # ValueError if the spec cannot run there

A "place" is where a plan's index points: a block (MViT, ViT) or a stage (Swin), `selection_place`.
The forward is the same loop for every backbone: embed, then for each place run the selectors placed
before it and the place itself, then the final norm (timm's `forward_features` -> `forward_head`).
A backbone supplies the pieces:

    _embed(x) -> (x, thw)                  patch embedding (+ position embeddings, class token)
    _places() -> list of modules           its blocks or stages, in order
    _run_place(i, x, thw) -> (x, thw)      place i on the token map
    _place_dims() -> list[int]             channels entering each place
    _grid_after_place(i, thw) -> thw       the grid place i outputs (its own pooling or merging)
    forward_head(x, pre_logits=False)

and the attributes `patch_embed` (with `grid(t, h, w)`), `selectors` (an `nn.ModuleDict`, filled by
`stts.patch`), `input_size` (C, T, H, W), `norm`, `head`, `num_features`. What a selector keeps is its
spec's rule (`stts.plan.SelectorSpec.out_grid`), so the grids here and in the forward cannot disagree.
"""

from __future__ import annotations

from torch import Tensor, nn

from stts.patch import run_selectors

__all__ = ["VideoClassifier"]

Thw = tuple[int, int, int]


class VideoClassifier(nn.Module):
    """Base of the stts backbones: forward = forward_head(forward_features(x)); selection surface."""

    selection_kinds = "TS"  # the plan letters it accepts (stts.patch)
    selection_place = "block"  # what a plan's index counts ("T0": before block 0; Swin: stage)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, x: Tensor, return_selections: bool = False, *, noise_seeds: Tensor | None = None):
        """(B, C_in, T, H, W) -> logits (B, num_classes) [, {selector name: Selection}].

        noise_seeds: (B,) int64, one seed per clip for the selectors' perturbed top-K in training.
        """
        head_only = self.skip_unread_tokens
        if return_selections:
            x, record = self.forward_features(x, return_selections=True, noise_seeds=noise_seeds,
                                              head_tokens_only=head_only)
            return self.forward_head(x), record
        return self.forward_head(self.forward_features(x, noise_seeds=noise_seeds, head_tokens_only=head_only))

    # The logits read only the class token of the last place's output, and every other token of it is
    # read by nothing: the last place then computes the class token alone (q, attention output and MLP
    # of one token; keys and values still of all). Same numbers, less work: MViT-B's last block is
    # about 4% of its FLOPs at every budget. stts.flops turns it off (and every module's
    # skip_unread_tokens), to count the published (full) computation.
    skip_unread_tokens = True

    def forward_features(self, x: Tensor, return_selections: bool = False, *, noise_seeds: Tensor | None = None,
                         head_tokens_only: bool = False):
        """(B, C_in, T, H, W) -> normalised token map [, {selector name: Selection}].

        head_tokens_only: the last place may return only the tokens `forward_head` reads (the prefix
        tokens, where the backbone's head reads its class token and it has `_run_place_prefix_only`).
        """
        if x.dim() != 5:
            raise ValueError(f"expected a (B, C, T, H, W) clip, got shape {tuple(x.shape)}")
        x, thw = self._embed(x)
        record = {} if return_selections else None
        placed = {sel.before for sel in self.selectors.values()}
        last = len(self._places()) - 1 if head_tokens_only and self._head_reads_prefix_only() else None
        for i in range(len(self._places())):
            if i in placed:
                x, thw = self._select(i, x, thw, record, noise_seeds)
            x, thw = self._run_place_prefix_only(i, x, thw) if i == last else self._run_place(i, x, thw)
        x = self.norm(x)
        return (x, record) if return_selections else x

    def _select(self, index: int, x: Tensor, thw: Thw, record: dict | None, seeds: Tensor | None):
        """The selectors before place `index` on tokens (B, P + T*H*W, C)."""
        return run_selectors(self.selectors, index, x, thw, record, seeds)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # -- selection surface (stts.patch) ------------------------------------------------------------

    def selection_dim(self, index: int) -> int:
        """Channels of the tokens entering place `index`; ValueError if there is no such place."""
        dims = self._place_dims()
        if not isinstance(index, int) or not 0 <= index < len(dims):
            raise ValueError(f"{self.selection_place} index {index} does not exist; {type(self).__name__} has "
                             f"{self.selection_place}s 0..{len(dims) - 1}")
        return dims[index]

    def grid_before(self, index: int, input_size: tuple | None = None) -> Thw:
        """Token grid (T, H, W) entering place `index` (before its own selectors) for an input (C, T, H, W)
        (default `input_size`), after the selectors of earlier places ((1, 1, K) after token-level)."""
        _, t, h, w = input_size or self.input_size
        thw = self.patch_embed.grid(t, h, w)
        for i in range(index):
            for sel in self.selectors.values():  # kept in execution order by stts.patch
                if sel.before == i:
                    thw = sel.out_grid(thw)
            thw = self._grid_after_place(i, thw)
        return thw

    def grid_at(self, spec, input_size: tuple | None = None) -> Thw:
        """The (T, H, W) map the selector of `spec` (a SelectorSpec) is given: the grid entering its place
        after the selectors in the model that run before it (earlier places, and at its own place the
        earlier kinds: T before S before K)."""
        thw = self.grid_before(spec.before, input_size)
        for sel in self.selectors.values():
            if sel.before == spec.before and sel.spec.order < spec.order:
                thw = sel.out_grid(thw)
        return thw

    def check_selection(self, spec) -> None:
        """Raise ValueError if `spec` (a SelectorSpec) cannot run at the default input size: no such place
        (`selection_dim`), more frames or tokens kept than there are, an anchor larger than the map, or
        what the backbone's own `check_anchor` forbids. The message names the map it would see (`grid_at`:
        the selectors in the model before it have run)."""
        self.selection_dim(spec.before)
        T, H, W = self.grid_at(spec)
        where = (f"before {self.selection_place} {spec.before} of {type(self).__name__} the map is {T}x{H}x{W} "
                 f"(T x H x W) for the default {self.input_size[1]}x{self.input_size[2]}x{self.input_size[3]} input")
        if spec.kind == "S":
            a = spec.anchor(H, W)[0]
            if not 1 <= a <= min(H, W):
                raise ValueError(f"{spec} asks for a {a}x{a} anchor: {where}")
            self.check_anchor(spec, a, (T, H, W), where)
            return
        n, what = (T, "frames") if spec.kind == "T" else (T * H * W, "tokens")
        k = spec.kept(n)
        if not 1 <= k <= n:
            raise ValueError(f"{spec} keeps {k} {what}: {where}")

    def check_anchor(self, spec, a: int, thw: Thw, where: str) -> None:
        """Backbone-specific limits on an a x a anchor (Swin: the window partition); none by default."""

    # -- what a backbone supplies ------------------------------------------------------------------

    def _embed(self, x: Tensor) -> tuple[Tensor, Thw]:
        raise NotImplementedError

    def _places(self) -> nn.ModuleList:
        raise NotImplementedError

    def _run_place(self, index: int, x: Tensor, thw: Thw) -> tuple[Tensor, Thw]:
        raise NotImplementedError

    def _head_reads_prefix_only(self) -> bool:
        """Whether forward_head reads only the prefix (class) tokens; then `_run_place_prefix_only` exists."""
        return False

    def _run_place_prefix_only(self, index: int, x: Tensor, thw: Thw) -> tuple[Tensor, Thw]:
        """Place `index`'s output at the prefix tokens only: (B, P + N, C) -> (B, P, C')."""
        raise NotImplementedError

    def _place_dims(self) -> list[int]:
        raise NotImplementedError

    def _grid_after_place(self, index: int, thw: Thw) -> Thw:
        return thw

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError
