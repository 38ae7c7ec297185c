"""The one place a training flag is declared: name, default, help, group.

``TrainConfig`` is flat on purpose: its field names are the CLI flags (``_`` -> ``-``) and the
keys of YAML model configs, so a flag in the user's guide, a YAML key and ``config.yaml``
beside a checkpoint are the same word. argparse is generated from the fields; booleans get a
``--x/--no-x`` pair. Precedence: dataclass default < ``--config FILE.yaml`` < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Parser, UserError

# timm's DINOv3 architectures per --backbone-size; "hub" weights are timm's HUB_TAG release of each.
TIMM_NAMES = {
    "tiny": "vit_small_patch16_dinov3",  # shrunk by models.backbone.TINY_KWARGS, random only
    "small": "vit_small_patch16_dinov3",
    "small_plus": "vit_small_plus_patch16_dinov3",  # 29 M, SwiGLU: small's width, more capacity
    "base": "vit_base_patch16_dinov3",
    "large": "vit_large_patch16_dinov3",
    "huge": "vit_huge_plus_patch16_dinov3",
    "7b": "vit_7b_patch16_dinov3",  # 6.7 B: 13.4 GB of bf16 weights before any training state
}
HUB_TAG = "lvd1689m"
BACKBONE_SIZES = tuple(TIMM_NAMES)
# Depth Anything V2 on the hub, per --depth-model-size (the default of --depth-model)
DEPTH_HUB_IDS = {
    "small": "depth-anything/Depth-Anything-V2-Small-hf",  # Apache-2.0
    "base": "depth-anything/Depth-Anything-V2-Base-hf",  # CC-BY-NC-4.0
}
DEPTH_SIZES = tuple(DEPTH_HUB_IDS)
CV_STRATEGIES = ("group_location", "group_date", "stratified", "kfold")
LORA_LR_MULT = 1.0  # --lora-lr 0: the adapters' peak LR is this x --backbone-lr


def opt(default, help: str, group: str, *, no_flag: str | None = None, choices=None, nargs=None, type=None):
    """A config field. ``no_flag`` overrides the negative flag name of a boolean (guide spelling)."""
    meta = {"help": help, "group": group, "no_flag": no_flag, "choices": choices, "nargs": nargs, "type": type}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # --- run -----------------------------------------------------------------------------------
    data_dir: str = opt("data", "folder with train.csv, test.csv and the images (Kaggle layout)", "run")
    output_dir: str = opt("outputs", "where fold<k>/ checkpoints, history and OOF files go", "run")
    seed: int = opt(42, "random seed (model init, data order, augmentation)", "run")
    device: str = opt("auto", "auto (cuda > mps > cpu), cuda, mps or cpu", "run", choices=("auto", "cuda", "mps", "cpu"))
    num_workers: int = opt(2, "DataLoader worker processes per rank (at most the rank's share of --cpus, less one)", "run")
    cpus: int = opt(0, "CPUs of the whole job: loader workers + compute threads of every rank add up to it "
                    "(0: the CPUs this process may run on; OMP_NUM_THREADS, when set, caps the threads)", "run")
    image_cache_dir: str = opt("", "folder of image caches (<dir>/<size>/<split>.npy, python -m src.image_cache); "
                               "empty: each photo is decoded once into memory when the halves fit a quarter of the available "
                               "memory, else every epoch", "run")
    resume: bool = opt(False, "continue each fold from its last completed epoch (fold<k>/last.*)", "run")

    # --- model ---------------------------------------------------------------------------------
    backbone_size: str = opt("base", "DINOv3 ViT size; tiny = 2-layer random model for tests/demo", "model", choices=BACKBONE_SIZES)
    backbone_weights: str = opt("hub", "hub (timm .lvd1689m weights), none (random init) or a local weights file", "model")
    image_size: int = opt(512, "pixels per side of each square half fed to the backbone (multiple of 16)", "model")
    gradient_checkpointing: bool = opt(False, "recompute backbone activations in backward (saves memory)", "model")
    lora_rank: int = opt(0, "LoRA adapters (peft) of this rank on the Linear layers of the backbone's last "
                         "--lora-blocks blocks; the backbone's own weights then never train (0 = off: full finetuning)",
                         "model")
    lora_blocks: int = opt(4, "how many of the backbone's last blocks get LoRA adapters (with --lora-rank)", "model")
    lora_lr: float = opt(0.0, "peak learning rate of the LoRA adapters (Stage 2, or --no-two-stage); 0: "
                         f"{LORA_LR_MULT:g} x --backbone-lr", "model")
    feature_layers: list = opt([], "tokens from these backbone blocks, averaged (each through the final norm; "
                               "negative counts from the end: -1 -4 -8); empty: the last block's", "model", nargs="+",
                               type=int)
    compile: bool = opt(False, "torch.compile the backbone (worth it on CUDA; the first steps are slow)", "model")
    feature_cache: bool = opt(True, "while the backbone is frozen, compute its tokens once per view and train the heads "
                              "on them (not with --use-aos-hallucination)", "training")
    feature_cache_views: int = opt(4, "augmented samples per image in the feature cache, each drawn with the training "
                                   "augmentation (strong aug, perspective jitter, border mask)", "training")
    train_dead: bool = opt(False, "predict Dead directly, Total = GDM + Dead (else Total directly, Dead = Total - GDM; "
                           "the loss sees it unclipped, so it trains the Total head)", "heads")
    train_clover: bool = opt(True, "predict Clover directly (else GDM directly, Clover = GDM - Green)", "heads")
    density_tokens: str = opt("cls_patch", "what the density head scores: cls_patch (each patch token joined with its "
                              "half's CLS token) or patch (each patch token alone)", "heads", choices=("cls_patch", "patch"))
    use_ratio_head: bool = opt(False, "predict Total, and Green, Dead and Clover as softmax shares of it (GDM = Green + "
                               "Clover): every mass non-negative and both relations exact by construction", "heads")

    # --- loss ----------------------------------------------------------------------------------
    smoothl1: bool = opt(True, "SmoothL1 on standardised targets (--no-smoothl1: MSE)", "loss")
    use_huber: bool = opt(False, "Huber loss for Dead (outlier robust)", "loss")
    huber_delta: float = opt(5.0, "Huber delta in grams (the loss itself is in standardised grams, like SmoothL1)",
                             "loss")
    use_planthydra_loss: bool = opt(False, "log transform + cosine similarity + compositional", "loss")
    use_log_transform: bool = opt(False, "regress log(1+grams), the official metric's space", "loss")
    use_cosine_sim: bool = opt(False, "cosine similarity loss between predicted and true 5-vectors", "loss")
    cosine_weight: float = opt(0.4, "weight of the cosine loss", "loss")
    use_compositional: bool = opt(False, "direct heads for all five, penalise GDM=G+C and Total=G+D+C", "loss")
    compositional_weight: float = opt(0.1, "weight of the compositional penalty", "loss")
    use_mass_balance: bool = opt(False, "physical mass balance Green + Dead + Clover = Total, GDM = Green + Clover "
                                 "(acts on free heads: --use-compositional / PlantHydra) and no negative mass", "loss")
    mass_balance_weight: float = opt(0.2, "weight of the mass-balance penalty", "loss")

    # --- auxiliary heads -----------------------------------------------------------------------
    use_height_head: bool = opt(False, "auxiliary head predicting Height_Ave_cm (train-only signal)", "aux")
    height_weight: float = opt(0.3, "weight of the height loss", "aux")
    use_ndvi_head: bool = opt(False, "auxiliary head predicting Pre_GSHH_NDVI (train-only signal)", "aux")
    ndvi_weight: float = opt(0.3, "weight of the NDVI loss", "aux")
    use_species_head: bool = opt(False, "species classification head", "aux")
    aux_species_weight: float = opt(0.1, "weight of the species loss", "aux")
    use_quantile_heads: bool = opt(False, "per target, classify the image into 7 bins cut at the training fold's "
                                   "quantiles (auxiliary cross-entropy; the 1st place's extra task)", "aux")
    quantile_weight: float = opt(0.1, "weight of the quantile-bin loss", "aux")
    use_species_prior: bool = opt(False, "blend predictions with species->biomass means of the training fold", "aux")
    species_prior_strength: float = opt(0.2, "blend strength of the species prior", "aux")
    use_aos_hallucination: bool = opt(False, "lighting-invariant AOS NDVI predicted from RGB (needs --use-ndvi-head)", "aux")
    aos_weight: float = opt(0.3, "weight of the AOS loss", "aux")
    aux_tokens: str = opt("cls_patch", "what the auxiliary heads read per half (then averaged over the halves): "
                          "cls_patch ([CLS, mean patch token]), patch (the mean patch token) or cls", "aux",
                          choices=("cls_patch", "patch", "cls"))
    aux_cls_grad: bool = opt(True, "the auxiliary heads' loss trains the backbone through the CLS token too "
                             "(--no-aux-cls-grad: the CLS they read is detached; the patch tokens still pass it)", "aux")
    use_presence_heads: bool = opt(False, "zero-vs-nonzero heads for Dead and Clover; Dead and Clover are gated by "
                                   "their presence probability in training and evaluation alike", "aux")

    # --- advanced ------------------------------------------------------------------------------
    use_cross_view_consistency: bool = opt(False, "left/right halves must agree per area", "advanced")
    cross_view_weight: float = opt(0.1, "weight of the cross-view loss", "advanced")
    use_depth: bool = opt(True, "Depth Anything V2 depth features (--no-use-depth: no depth at all)", "advanced")
    depth_attention: bool = opt(True, "depth-guided attention pooling of patch tokens (needs --use-depth)", "advanced")
    depth_model_size: str = opt("small", "Depth Anything V2 size whose depth cache is read; the depth model runs "
                                "once in python -m src.depth_cache, so it costs training no GPU memory", "advanced",
                                choices=DEPTH_SIZES)
    depth_model: str = opt("", "Depth Anything V2 hub id or local dir (default: the hub id of --depth-model-size)", "advanced")
    depth_cache_dir: str = opt("results/depth", "folder of depth caches (<dir>/<size>/<split>.safetensors)", "advanced")
    depth_resolution: int = opt(64, "pixels per side of each cached half depth map", "advanced")
    depth_backend: str = opt("torchvision", "image processor backend the depth cache was made with", "advanced",
                             choices=("torchvision", "pil"))
    use_state_scaling: bool = opt(False, "per-State scale and bias through a State head (climate correction)", "advanced")
    use_uncertainty: bool = opt(False, "mean + log-variance heads, Gaussian NLL", "advanced")
    use_qc_plausibility: bool = opt(False, "penalties for implausible outputs", "advanced")
    qc_weight: float = opt(0.1, "weight of the QC penalties", "advanced")

    # --- augmentation --------------------------------------------------------------------------
    strong_aug: bool = opt(True, "RandomRotate90, flips, ColorJitter, CLAHE, MotionBlur per half (else flips only)", "augmentation")
    use_perspective_jitter: bool = opt(False, "small random perspective warps (quadrat annotation noise)", "augmentation")
    use_border_mask: bool = opt(False, "blank a border band of each half (frame artifacts)", "augmentation")
    use_pad_to_square: bool = opt(False, "pad non-square halves to square instead of stretching them", "augmentation")
    mixup_alpha: float = opt(0.0, "mixup: interpolate a training image and its masses with another's by a "
                             "Beta(alpha, alpha) weight (pixels; cached tokens while the backbone is frozen); 0 = off",
                             "augmentation")
    mixup_prob: float = opt(0.5, "fraction of training images mixed each epoch (with --mixup-alpha)", "augmentation")
    clean_date_stamp: bool = opt(False, "paint out the camera's orange date stamp (bottom right) as each photo is "
                                 "decoded: caches, training and prediction alike", "augmentation")
    crop_bottom: float = opt(0.0, "cut this fraction of each photo's height off its bottom as it is decoded "
                             "(after --clean-date-stamp)", "augmentation")

    # --- training ------------------------------------------------------------------------------
    two_stage: bool = opt(True, "Stage 1 frozen backbone until patience, then Stage 2 finetuning; Stage 2 starts "
                          "from Stage 1's best weights with a fresh AdamW and a fresh warm-up", "training")
    stage1_patience: int = opt(10, "Stage 1 epochs without val weighted_r2 gain before Stage 2", "training")
    freeze_epochs: int = opt(30, "maximum Stage 1 epochs", "training")
    stage2_epochs: int = opt(20, "Stage 2 epochs", "training")
    epochs: int = opt(50, "epochs of single-stage training (--no-two-stage)", "training")
    freeze_backbone: bool = opt(False, "keep the backbone frozen throughout (with --no-two-stage: heads only)", "training")
    lr: float = opt(2e-4, "peak head learning rate (Stage 1, and heads in Stage 2); the heads' floor is 1%% of it",
                    "training")
    backbone_lr: float = opt(1e-5, "peak backbone learning rate (Stage 2, or --no-two-stage); floor 1%% of it", "training")
    lr_mult: float = opt(1.0, "layer-wise LR decay per block of the backbone (1.0 = none)", "training")
    weight_decay: float = opt(0.05, "AdamW weight decay", "training")
    warmup_epochs: float = opt(1.0, "linear warm-up from 1%% to the peak --lr / --backbone-lr at the start of each "
                               "stage; the peak is then held and decays over the stage's last 20%% to 1%% of it",
                               "training")
    batch_size: int = opt(16, "effective batch size (split across DDP ranks automatically)", "training")
    grad_accum: int = opt(1, "gradient accumulation steps per optimiser step", "training")
    grad_clip: float = opt(1.0, "max gradient norm (0 = off)", "training")
    ema: bool = opt(True, "validate, checkpoint and predict with an exponential moving average of the weights (timm "
                    "ModelEmaV3), started in each stage of --ema-stages from the weights that stage starts with "
                    "(--no-ema: the raw weights)", "training")
    ema_decay: float = opt(0.99, "EMA decay per optimiser update: the average spans about 1/(1-decay) updates (0.99: "
                           "100), capped at 1 - 2/(the stage's updates) so that it spans at most half the stage. "
                           "With --ema-warmup the decay at update t is min(this, 1 - (1+t)^(-2/3)): 0.974 after "
                           "240 updates and 0.99 after 1000, so in a run of a few hundred updates the warm-up, not this "
                           "value, sets it", "training")
    ema_warmup: bool = opt(False, "timm's EMA warm-up (see --ema-decay); off: the decay is --ema-decay from the first "
                           "update", "training")
    ema_stages: str = opt("last", "stages that keep an EMA: last (Stage 2 when two stages run: Stage 1 trains only the "
                          "heads and Stage 2 starts from its best raw weights, not a lagging average) or all",
                          "training", choices=("last", "all"))
    swa_top_k: int = opt(0, "average the weights of K epochs of the last stage into the fold's final weights and OOF "
                         "(--swa-select says which); 0 or 1: no averaging", "training")
    swa_select: str = opt("last", "which epochs --swa-top-k averages: last (the stage's last K: nothing is chosen on the "
                          "fold's validation images, so its OOF score is unbiased) or best (the K best by validation "
                          "weighted_r2 on the fold's own images: optimistic, and no unbiased score exists for it)",
                          "training", choices=("last", "best"))

    # --- rounds after cross-validation (the pipeline's round 2 and refits) -----------------------
    pseudo_labels: str = opt("", "CSV of pseudo-labelled images (image_id, image_path under --data-dir, the five targets "
                             "in grams) added to each fold's training images, never to its validation; '{fold}' in the "
                             "path is the fold number, so each fold reads labels made without its validation images",
                             "rounds")
    pseudo_weight: float = opt(0.5, "loss weight of a pseudo-labelled image (a real one has 1); the auxiliary heads "
                               "learn from real images only", "rounds")
    refit_from: str = opt("", "full-data refit: train on every image of the fold CSV, without validation, for the "
                          "epoch counts the folds of this CV run's --output-dir chose (median over fold<k>/metrics.json "
                          "of each stage's epochs up to the best one); the last epoch's weights go to "
                          "<output-dir>/full/. With --folds K: the refit check of fold K (its training images, the "
                          "other folds' epochs, scored on its validation images: <output-dir>/fold<K>/oof.parquet)",
                          "rounds")

    # --- cross-validation ----------------------------------------------------------------------
    use_predefined_folds: bool = opt(True, "read folds from --fold-csv", "cv", no_flag="--no-predefined-folds")
    fold_csv: str = opt("data/trainfold_group_location.csv", "fold CSV (image_id, fold)", "cv")
    n_folds: int = opt(5, "number of folds", "cv")
    folds: list = opt([], "folds to train", "cv", nargs="+", type=int)
    cv_strategy: str = opt("group_location", "fold strategy with --no-predefined-folds", "cv", choices=CV_STRATEGIES)
    fold_seed: int = opt(42, "seed of the folds built with --no-predefined-folds; not --seed, so models with "
                         "different seeds are validated on the same folds and their OOF can be blended", "cv")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# A saved config.yaml written before a field existed meant this value (not today's default): a
# checkpoint trained then must still load into the model it was trained as.
BEFORE_FIELD = {"density_tokens": "patch"}  # #27: the default became cls_patch
# Settings that do not change what a fold learns (where it runs, where files are): a resume may
# differ in these, and fold models that differ only in these are one model.
RUNTIME_ONLY = {"resume", "num_workers", "cpus", "device", "output_dir", "folds", "data_dir", "fold_csv", "depth_cache_dir",
                "image_cache_dir", "pseudo_labels"}  # where the pseudo-labels are; their content is in fold_inputs


def default_of(name: str) -> Any:
    """A field's default (a fresh list for list fields)."""
    f = FIELDS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m src.dinov3_train",
        description="Train DINOv3 biomass regressors with k-fold CV (also under torchrun).",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML with TrainConfig field names; the command line overrides it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        m = f.metadata
        g = groups.setdefault(m["group"], p.add_argument_group(m["group"]))
        default = default_of(f.name)
        # argparse.SUPPRESS: only flags actually given override the YAML/dataclass defaults.
        if isinstance(default, bool):
            no = m["no_flag"] or "--no-" + f.name.replace("_", "-")
            g.add_argument(flag(f.name), dest=f.name, action="store_true", default=argparse.SUPPRESS,
                           help=f"{m['help']} (default: {'ON' if default else 'off'})")
            g.add_argument(no, dest=f.name, action="store_false", default=argparse.SUPPRESS, help=f"turn {flag(f.name)} off")
        else:
            typ = m["type"] or type(default)
            g.add_argument(flag(f.name), dest=f.name, type=typ, choices=m["choices"], nargs=m["nargs"],
                           default=argparse.SUPPRESS, help=f"{m['help']} (default: {default if default != [] else 'all'})")
    return p


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})")
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of TrainConfig field names to values")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; keys are the trainer's flag names with '_' (see --help)")
    return {k.replace("-", "_"): v for k, v in data.items()}


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; keys are the trainer's flag names with '_'")
    cfg = TrainConfig(**{k: _typed(k, v, source) for k, v in values.items()})
    validate(cfg, source)
    return resolve(cfg)


_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731  (YAML's true is an int too)
# field type -> (accepts a value, what the message says it must be)
_TYPES = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (_is_int, "an integer"),
    float: (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    list: (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers"),
    str: (lambda v: isinstance(v, str), "a string"),
}


# Numbers spelt as text: PyYAML (YAML 1.1) reads 1e-3, 1E-3 and +1e3 as strings (it wants a dot),
# and a Snakemake override may be "8". Plain decimal spellings only: no "nan", "inf", "0x10" or "1_000".
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _number_from_text(value: Any, default: Any) -> Any:
    """A string that spells a number of the field's kind (a float literal for a float field, an
    integer literal for an int field) as that number; anything else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if isinstance(default, float) and _FLOAT_TEXT.fullmatch(text):
            return float(text)
        if _is_int(default) and _INT_TEXT.fullmatch(text):
            return int(text)
    return value


def _typed(name: str, value: Any, source: str) -> Any:
    """``value`` as the field's type, or one line naming the key, the value and the type it needs.
    YAML and Snakemake overrides arrive untyped: a number spelt as text counts ("1e-3" for a float,
    "8" for an integer), but "no" is not False and "8.0" is not an integer."""
    default = default_of(name)
    value = _number_from_text(value, default)
    accepts, kind = _TYPES[type(default)]
    if not accepts(value):
        raise UserError(f"{source}: {name} = {value!r} ({type(value).__name__}) must be {kind}, like {default!r}")
    return float(value) if isinstance(default, float) else value


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Expand umbrella flags, so the config written beside a checkpoint says what ran."""
    if cfg.use_planthydra_loss:
        cfg.use_log_transform = cfg.use_cosine_sim = cfg.use_compositional = True
    if not cfg.use_depth:
        cfg.depth_attention = False  # depth attention weights patches by depth: no depth, no attention
    return cfg


def parse_config(argv=None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    path = args.pop("config", None)
    values = load_yaml(path) if path else {}
    values.update(args)
    return from_dict(values, source=f"{path} / command line" if path else "command line")


def validate(cfg: TrainConfig, source: str = "config") -> None:
    """Reject values that cannot work, naming the flag and the fix."""
    for name, f in FIELDS.items():
        choices = f.metadata["choices"]
        if choices and getattr(cfg, name) not in choices:
            raise UserError(f"{source}: {flag(name)} {getattr(cfg, name)!r} is not one of {', '.join(choices)}")
    if cfg.image_size <= 0 or cfg.image_size % 16:
        raise UserError(f"{source}: --image-size {cfg.image_size} must be a positive multiple of 16 (the patch size)")
    if cfg.feature_cache_views < 1:
        raise UserError(f"{source}: --feature-cache-views must be >= 1")
    for name in ("batch_size", "grad_accum", "n_folds"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{source}: {flag(name)} must be >= 1")
    if cfg.n_folds < 2:
        raise UserError(f"{source}: --n-folds must be >= 2")
    bad = [k for k in cfg.folds if not 0 <= k < cfg.n_folds]
    if bad:
        raise UserError(f"{source}: --folds {bad} outside 0..{cfg.n_folds - 1}")
    for name in ("lr", "backbone_lr", "lr_mult"):
        if not math.isfinite(getattr(cfg, name)) or getattr(cfg, name) <= 0:
            raise UserError(f"{source}: {flag(name)} {getattr(cfg, name)} must be a finite number > 0")
    for name in ("weight_decay", "grad_clip", "warmup_epochs", "huber_delta", "species_prior_strength"):
        if not math.isfinite(getattr(cfg, name)):
            raise UserError(f"{source}: {flag(name)} {getattr(cfg, name)} must be a finite number")
    for name in ("epochs", "freeze_epochs", "stage2_epochs", "num_workers", "seed", "fold_seed", "weight_decay",
                 "grad_clip", "warmup_epochs"):  # fmt: skip
        if getattr(cfg, name) < 0:
            raise UserError(f"{source}: {flag(name)} {getattr(cfg, name)} must be >= 0")
    if cfg.use_ratio_head and (cfg.train_dead or not cfg.train_clover or cfg.use_compositional
                               or cfg.use_planthydra_loss or cfg.use_presence_heads):  # fmt: skip
        raise UserError(f"{source}: --use-ratio-head chooses the heads itself (Total and three shares); drop --train-dead "
                        "/ --no-train-clover / --use-compositional / --use-planthydra-loss / --use-presence-heads")
    if not 0 < cfg.ema_decay < 1:
        raise UserError(f"{source}: --ema-decay {cfg.ema_decay} must be within 0..1 (exclusive), e.g. 0.99")
    if not 0 <= cfg.crop_bottom <= 0.5:
        raise UserError(f"{source}: --crop-bottom {cfg.crop_bottom} must be within 0..0.5 (a fraction of the height)")
    if not cfg.mixup_alpha >= 0 or not 0 <= cfg.mixup_prob <= 1:
        raise UserError(f"{source}: --mixup-alpha must be >= 0 and --mixup-prob within 0..1")
    if cfg.lora_rank < 0 or cfg.lora_blocks < 1 or cfg.lora_lr < 0:
        raise UserError(f"{source}: --lora-rank and --lora-lr must be >= 0 and --lora-blocks >= 1")
    if cfg.swa_top_k < 0:
        raise UserError(f"{source}: --swa-top-k {cfg.swa_top_k} must be >= 0")
    if not 0 < cfg.pseudo_weight <= 1:
        raise UserError(f"{source}: --pseudo-weight {cfg.pseudo_weight} must be within 0..1 (0 excluded)")
    if cfg.refit_from and cfg.swa_top_k > 1:
        raise UserError(f"{source}: --refit-from has no validation to rank epochs by; drop --swa-top-k")
    if cfg.stage1_patience < 1:
        raise UserError(f"{source}: --stage1-patience {cfg.stage1_patience} must be >= 1 (epochs without gain)")
    planned = cfg.freeze_epochs + cfg.stage2_epochs if cfg.two_stage else cfg.epochs
    if planned == 0:
        which = "--freeze-epochs and --stage2-epochs are" if cfg.two_stage else "--epochs is"
        raise UserError(f"{source}: {which} 0: nothing to train")
    if cfg.use_aos_hallucination and not cfg.use_ndvi_head:
        raise UserError(f"{source}: --use-aos-hallucination needs --use-ndvi-head (it makes the NDVI head lighting-invariant)")
    if cfg.use_species_prior and not cfg.use_species_head:
        raise UserError(f"{source}: --use-species-prior needs --use-species-head (it blends by predicted species)")
    if (cfg.use_compositional or cfg.use_planthydra_loss) and (cfg.train_dead or not cfg.train_clover):
        raise UserError(f"{source}: --use-compositional (or --use-planthydra-loss) gives every target its own head; "
                        "drop --train-dead / --no-train-clover")
    if not 0 <= cfg.species_prior_strength <= 1:
        raise UserError(f"{source}: --species-prior-strength must be within 0..1")
    if cfg.huber_delta <= 0:
        raise UserError(f"{source}: --huber-delta must be > 0 (grams)")
    weights = ("cosine_weight", "compositional_weight", "mass_balance_weight", "height_weight", "ndvi_weight",
               "aux_species_weight", "aos_weight", "cross_view_weight", "qc_weight", "quantile_weight")  # fmt: skip
    for name in weights:
        if not getattr(cfg, name) >= 0 or not math.isfinite(getattr(cfg, name)):
            raise UserError(f"{source}: {flag(name)} must be a finite number >= 0")


def idle_flags(cfg: TrainConfig) -> list[str]:
    """Flags set away from their default that cannot act in this run: the trainer says so once."""
    moved = lambda name: getattr(cfg, name) != FIELDS[name].default  # noqa: E731
    out = []
    if cfg.use_predefined_folds:
        out += [f"{flag(n)} acts only with --no-predefined-folds; the folds come from --fold-csv"
                for n in ("cv_strategy", "fold_seed") if moved(n)]  # fmt: skip
    if cfg.two_stage and moved("epochs"):
        out.append("--epochs acts only with --no-two-stage; two stages run --freeze-epochs, then --stage2-epochs")
    if cfg.two_stage and 0 < cfg.freeze_epochs <= cfg.stage1_patience:
        out.append(f"--stage1-patience {cfg.stage1_patience} cannot end Stage 1 before --freeze-epochs "
                   f"{cfg.freeze_epochs}: Stage 1 runs all {cfg.freeze_epochs} epochs")
    if not cfg.use_depth and moved("depth_model_size"):
        out.append("--depth-model-size acts only with --use-depth")
    return out


def to_argv(values: dict[str, Any]) -> list[str]:
    """Trainer flags for a mapping of field names to values (the pipeline's per-model overrides)."""
    argv: list[str] = []
    for name, value in values.items():
        if name not in FIELDS:
            raise UserError(f"unknown trainer option {name!r}; options are the trainer's flag names with '_'")
        if isinstance(value, bool):
            argv.append(flag(name) if value else FIELDS[name].metadata["no_flag"] or "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag(name), *map(str, value)]
        else:
            argv += [flag(name), str(value)]
    return argv


def save_yaml(cfg: TrainConfig, path) -> None:
    from .io_utils import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
