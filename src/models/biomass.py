"""The biomass model: one DINOv3 backbone shared by the left and right halves of a quadrat photo.

Each half's patches predict mass densities; a half's mass is their (depth-weighted) mean, the
image's is the mean of its halves (both show the same quadrat at the same scale). By default
three targets come from the head and two are derived by the label relations
(``targets.complete``); with ``--use-compositional`` all five have heads and inference reports
them reconciled by the relations. Outputs are non-negative grams obeying GDM = Green + Clover and
Total = GDM + Dead. Optional parts (depth, auxiliary heads, State scaling, species prior,
presence gating) are built only when their flag is on.
"""

from __future__ import annotations

import contextlib

import pandas as pd
import torch
import torch.nn as nn

from ..core.config import TrainConfig
from ..core.errors import UserError
from ..core.targets import TARGETS, complete, consistent, direct_targets, reconcile
from ..data.transforms import MEAN, STD
from .aux_heads import build_aux_heads, start_at_data
from .backbone import add_lora, create_backbone, is_lora
from .depth import DepthAttention, DepthFeatures
from .heads import DensityHead

_DEAD, _CLOVER, _GDM, _TOTAL = (TARGETS.index(t) for t in ("Dry_Dead_g", "Dry_Clover_g", "GDM_g", "Dry_Total_g"))
# Outputs worth writing beside the five masses (OOF and test predictions), when the model has them.
EXPORTS = ("height_cm", "ndvi_value", "pred_std")


def export_frame(outputs: dict) -> pd.DataFrame:
    """Columns pred_height_cm, pred_ndvi and std_<target> from evaluated outputs (numpy)."""
    cols = {}
    if "height_cm" in outputs:
        cols["pred_height_cm"] = outputs["height_cm"]
    if "ndvi_value" in outputs:
        cols["pred_ndvi"] = outputs["ndvi_value"]
    if "pred_std" in outputs:
        cols.update({f"std_{t}": outputs["pred_std"][:, i] for i, t in enumerate(TARGETS)})
    return pd.DataFrame(cols)


def gate_presence(five: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Dead and Clover times their presence probability; GDM and Total lose what the gate took off
    (so consistent inputs stay consistent, and free compositional heads keep their own values)."""
    dead_off, clover_off = five[:, _DEAD] * (1 - p[:, 0]), five[:, _CLOVER] * (1 - p[:, 1])
    out = five.clone()
    out[:, _DEAD] = five[:, _DEAD] - dead_off
    out[:, _CLOVER] = five[:, _CLOVER] - clover_off
    out[:, _GDM] = five[:, _GDM] - clover_off
    out[:, _TOTAL] = five[:, _TOTAL] - dead_off - clover_off
    return out


def direct_heads(cfg: TrainConfig) -> tuple[str, ...]:
    """The masses the heads give; the ratio head gives the three components (Total x shares)."""
    if cfg.use_ratio_head:
        return ("Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g")
    return TARGETS if cfg.use_compositional else direct_targets(cfg.train_dead, cfg.train_clover)


class StateScaling(nn.Module):
    """Per-State learned scale and bias on the head outputs, mixed by the predicted State
    probabilities (test photos have no State). Starts as the identity."""

    def __init__(self, n_states: int, n_out: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(n_states, n_out))
        self.bias = nn.Parameter(torch.zeros(n_states, n_out))

    def forward(self, grams: torch.Tensor, probs: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """grams (B, 2, k), probs (B, S), unit (k,) -> rescaled grams."""
        scale = torch.exp(probs @ self.log_scale)[:, None]
        bias = (probs @ self.bias)[:, None] * unit
        return grams * scale + bias  # unclipped: the reported masses are clipped once, at the end


def compile_backbone(backbone: nn.Module) -> None:
    # Compile the bound method, not the module: state_dict keys (checkpoints) stay unchanged.
    backbone.forward_features = torch.compile(backbone.forward_features)


class BiomassModel(nn.Module):
    def __init__(self, cfg: TrainConfig, stats: dict[str, torch.Tensor] | None = None, extras: dict | None = None,
                 weights: str | None = None):
        """``stats``: training-fold statistics (see ``training.fit.fold_statistics``); absent when the
        model is rebuilt for loading, since they are buffers restored from the checkpoint.
        ``extras``: the vocabularies that size the heads ({"species": [...], "states": [...]}).
        ``weights`` overrides ``cfg.backbone_weights`` (prediction loads our own checkpoint)."""
        super().__init__()
        self.cfg = cfg
        extras = extras or {"species": [], "states": []}
        self.backbone = create_backbone(
            cfg.backbone_size, cfg.backbone_weights if weights is None else weights, cfg.image_size, cfg.gradient_checkpointing
        )
        if cfg.lora_rank:
            add_lora(self.backbone, cfg.lora_rank, cfg.lora_blocks)
        if cfg.compile:
            compile_backbone(self.backbone)
        dim = self.backbone.num_features
        blocks = len(self.backbone.blocks)
        bad = [i for i in cfg.feature_layers if not -blocks <= i < blocks]
        if bad:
            raise UserError(f"--feature-layers {bad}: this backbone has blocks 0..{blocks - 1} (or -{blocks}..-1)")
        self.num_prefix = self.backbone.num_prefix_tokens
        self.direct = direct_heads(cfg)
        self._direct_idx = [TARGETS.index(t) for t in self.direct]
        # --use-ratio-head: the density head gives Total alone, ``shares`` split it per half.
        self.head = DensityHead(dim * (2 if cfg.density_tokens == "cls_patch" else 1),
                                1 if cfg.use_ratio_head else len(self.direct))
        self.shares = nn.Linear(2 * dim, 3) if cfg.use_ratio_head else None
        self.depth_features = DepthFeatures(dim) if cfg.use_depth else None
        self.depth_attention = DepthAttention() if cfg.use_depth and cfg.depth_attention else None
        self.aux = build_aux_heads(cfg, dim * (2 if cfg.aux_tokens == "cls_patch" else 1), extras)
        self.state_scaling = StateScaling(len(extras["states"]), len(self.direct)) if cfg.use_state_scaling else None
        stats = stats or {}
        n_species = len(extras["species"])
        self.register_buffer("target_scale", stats.get("std", torch.ones(len(TARGETS))).float().clone())
        self.register_buffer("log_scale", stats.get("log_std", torch.ones(len(TARGETS))).float().clone())
        self.register_buffer("aux_stats", stats.get("aux", torch.tensor([0.0, 1.0, 0.0, 1.0])).float().clone())
        if cfg.use_species_prior:
            self.register_buffer("species_prior", stats.get("species_prior", torch.zeros(n_species, len(TARGETS))).float().clone())
        self.register_buffer("pixel_mean", torch.tensor(MEAN).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(STD).view(3, 1, 1) * 255, persistent=False)
        self.backbone_frozen = False
        if stats:
            self.start_at_data(stats)

    # --- backbone --------------------------------------------------------------------------------
    def freeze_backbone(self, frozen: bool) -> None:
        """With --lora-rank only the adapters ever train; the backbone's own weights stay as loaded."""
        self.backbone_frozen = frozen
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(not frozen and (not self.cfg.lora_rank or is_lora(name)))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) RGB -> the backbone's normalised input, on the model's device."""
        return (x.float() - self.pixel_mean) / self.pixel_std

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, 3, S, S) RGB 0..255 -> CLS (B*2, D) and patch tokens (B*2, N, D)."""
        flat = self.normalise(x.flatten(0, 1))
        with torch.no_grad() if self.backbone_frozen else contextlib.nullcontext():  # Stage 1 keeps no activations
            t = self._backbone_tokens(flat)
        return t[:, 0], t[:, self.num_prefix:]

    def _backbone_tokens(self, flat: torch.Tensor) -> torch.Tensor:
        """(B, prefix + N, D): the last block's tokens, or the mean over --feature-layers blocks."""
        if not self.cfg.feature_layers:
            return self.backbone.forward_features(flat)
        outs = self.backbone.forward_intermediates(flat, indices=list(self.cfg.feature_layers), norm=True,
                                                   output_fmt="NLC", intermediates_only=True,
                                                   return_prefix_tokens=True)  # fmt: skip
        return torch.stack([torch.cat([prefix, patches], 1) for patches, prefix in outs]).mean(0)

    def encode(self, x: torch.Tensor | None, depth: torch.Tensor | None, cached: dict | None = None):
        """Tokens with depth fused in, and the pooled image feature (B, 2D) for the auxiliary heads.
        ``cached``: the frozen backbone's tokens from the feature cache ({"cls", "patches"} per half)
        in place of running it on ``x``."""
        if cached is not None:
            b = cached["cls"].shape[0]
            cls, patches = cached["cls"].flatten(0, 1), cached["patches"].flatten(0, 1)
        else:
            b = x.shape[0]
            cls, patches = self.tokens(x)
        if self.depth_features is not None:
            if depth is None:
                raise ValueError("this model was built with depth: the batch needs 'depth' features")
            patches = self.depth_features(patches, depth.flatten(0, 1))
        return cls, patches, self.aux_feature(cls, patches, b)

    def aux_feature(self, cls: torch.Tensor, patches: torch.Tensor, b: int) -> torch.Tensor:
        """What the auxiliary heads read (--aux-tokens), per half, averaged over the two halves.
        --no-aux-cls-grad detaches the CLS there, so their loss trains the backbone only through
        the patch tokens the density head reads too."""
        cls = cls if self.cfg.aux_cls_grad else cls.detach()
        parts = {"cls_patch": (cls, patches.mean(1)), "patch": (patches.mean(1),), "cls": (cls,)}[self.cfg.aux_tokens]
        return torch.cat(parts, dim=-1).view(b, 2, -1).mean(1)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``batch``: image (B, 2, 3, S, S), or cls (B, 2, D) + patches (B, 2, N, D) from the
        feature cache; depth (B, 2, 2, S/16, S/16) with --use-depth; aos_view (a photometrically
        different copy of image) while training with AOS."""
        cached = batch if "patches" in batch else None
        b = batch["patches"].shape[0] if cached else batch["image"].shape[0]
        cls, patches, feat = self.encode(batch.get("image"), batch.get("depth"), cached)
        out = {name: head(feat) for name, head in self.aux.items()}

        if self.cfg.density_tokens == "cls_patch":
            density = self.head(torch.cat([patches, cls[:, None].expand(-1, patches.shape[1], -1)], -1))
        else:
            density = self.head(patches)  # (B*2, N, k)
        if self.depth_attention is not None:
            pooled = (density * self.depth_attention(batch["depth"].flatten(0, 1))[..., None]).sum(1)
        else:
            pooled = density.mean(1)
        pooled = pooled.float()  # relations and sums in fp32 even under bf16 autocast
        unit = self.target_scale[self._direct_idx]
        if self.shares is not None:
            share = self.shares(torch.cat([cls, patches.mean(1)], -1)).float().softmax(-1)
            per_half = (pooled * self.target_scale[_TOTAL] * share).view(b, 2, -1)
        else:
            per_half = (pooled * unit).view(b, 2, -1)  # grams, as if the half were the whole quadrat
        if self.state_scaling is not None:
            per_half = self.state_scaling(per_half, out["state"].softmax(-1), unit)
        raw = self._five(per_half.mean(1))
        if self.cfg.use_species_prior:
            s = self.cfg.species_prior_strength
            raw = (1 - s) * raw + s * out["species"].softmax(-1) @ self.species_prior
        if "presence" in out:  # the same gate in training and evaluation: one model, not two
            raw = gate_presence(raw, torch.sigmoid(out["presence"]))
        # Losses see ``raw``: unclipped, so no clip can cut a head off from its gradient (a relu on
        # Dead = Total - GDM did, and Dead stayed 0). Reported masses are ``pred``: non-negative and
        # obeying both relations.
        pred = reconcile(raw) if self.cfg.use_compositional else consistent(raw)
        out.update({"pred": pred, "raw": raw, "per_half": per_half})
        self._real_units(out, pred)
        if self.cfg.use_aos_hallucination and self.training and "aos_view" in batch:
            _, _, feat_aos = self.encode(batch["aos_view"], batch.get("depth"))
            out["ndvi_aos"] = self.aux["ndvi"](feat_aos)
        return out

    def _five(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, k) direct head grams -> (B, 5): five free heads as they are, or three direct ones with
        the two others derived by the label relations, unclipped (a derived mass may be negative)."""
        if self.cfg.use_compositional:
            return heads
        named = dict(zip(self.direct, heads.unbind(-1)))
        full = complete(named, clip=False)
        return torch.stack([full[t] for t in TARGETS], dim=-1)

    @torch.no_grad()
    def start_at_data(self, stats: dict) -> None:
        """Every head starts at the training fold's answer without the photo: the mass heads at the
        mean in the space the regression loss compares (grams, or log1p grams: there the mean of
        log1p), after the species prior and the presence gate; auxiliary heads see ``aux_heads``."""
        m = torch.expm1(stats["log_mean"].float()) if self.cfg.use_log_transform else stats["mean"].float()
        target = m.clone()
        if "presence" in self.aux:  # gated by P(present) at init: start the gated heads at E[y | y > 0]
            p = stats["presence"].float().clamp(min=1e-3)
            target[_DEAD], target[_CLOVER] = m[_DEAD] / p[0], m[_CLOVER] / p[1]
            # GDM and Total heads (direct or free) start above their means by what the gate takes off
            target[_GDM] = m[_GDM] + target[_CLOVER] - m[_CLOVER]
            target[_TOTAL] = m[_TOTAL] + target[_DEAD] - m[_DEAD] + target[_CLOVER] - m[_CLOVER]
        if self.cfg.use_species_prior:  # the prior term starts at the class-weighted means
            s = self.cfg.species_prior_strength
            if s < 1:
                target = (target - s * stats["species_freq"].float() @ self.species_prior) / (1 - s)
        if self.shares is not None:  # Total at its mean, each share at its mean fraction of it
            self.head.start_at(target[_TOTAL:_TOTAL + 1] / self.target_scale[_TOTAL])
            parts = target[self._direct_idx].clamp(min=1e-6)
            self.shares.weight.zero_()
            self.shares.bias.copy_(torch.log(parts / parts.sum()))
        else:
            self.head.start_at(target[self._direct_idx] / self.target_scale[self._direct_idx])
        start_at_data(self.aux, stats)

    def _real_units(self, out: dict, pred: torch.Tensor) -> None:
        """Auxiliary predictions in their own units, for the prediction files."""
        mu_h, sd_h, mu_n, sd_n = self.aux_stats
        if "height" in out:
            out["height_cm"] = torch.expm1(mu_h + sd_h * out["height"].squeeze(-1)).clamp(min=0)
        if "ndvi" in out:
            out["ndvi_value"] = mu_n + sd_n * out["ndvi"].squeeze(-1)
        if "logvar" in out:
            sigma = torch.exp(0.5 * out["logvar"])
            # delta method back to grams when the loss lives in log1p space
            out["pred_std"] = sigma * (self.log_scale * (1 + pred) if self.cfg.use_log_transform else self.target_scale)
