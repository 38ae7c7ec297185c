"""The guide's monitoring checklist as live hints, each printed once per fold.

A hint advises only what the run can still try: not a flag it already uses, nor one its other
flags refuse (--use-planthydra-loss gives Dead its own head, so --train-dead is refused there and
the guide's second option, presence heads, is offered instead).
"""

from __future__ import annotations

from ..core.config import TrainConfig

CLOVER_STALL_EPOCHS = 10
DEAD_AFTER_EPOCHS = 20
VAL_RISE_EPOCHS = 5  # epochs since the lowest val loss...
VAL_RISE = 1.1  # ...with val loss this far above it


class Hints:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.said: set[str] = set()
        self.best_clover = float("-inf")
        self.clover_since = 0
        self.best_val, self.best_val_epoch = float("inf"), 0

    def _dead_fix(self) -> str | None:
        if self.cfg.use_ratio_head:  # it refuses both fixes: Dead is already a share of its own
            return None
        if not (self.cfg.train_dead or self.cfg.use_compositional):
            return "--train-dead"
        return None if self.cfg.use_presence_heads else "--use-presence-heads"

    def check(self, epoch: int, row: dict) -> list[str]:
        out = []
        if row["val_loss"] > 2 * row["train_loss"] > 0:
            out.append(("overfit", "hint: val loss > 2x train loss (overfitting): reduce the LR (--lr 1e-4 --backbone-lr 5e-6) or regularise"))
        if row["val_loss"] < self.best_val:
            self.best_val, self.best_val_epoch = row["val_loss"], epoch
        elif epoch - self.best_val_epoch >= VAL_RISE_EPOCHS and row["val_loss"] > VAL_RISE * self.best_val:
            out.append(("val_rise", f"hint: val loss increasing ({VAL_RISE_EPOCHS}+ epochs above its low): reduce the LR "
                                    "or add regularisation (--use-cross-view-consistency, --grad-clip 0.5)"))
        fix = self._dead_fix()
        if fix and epoch + 1 >= DEAD_AFTER_EPOCHS and row["r2_dead"] < 0.2:
            out.append(("dead", f"hint: r2_dead < 0.2 after {DEAD_AFTER_EPOCHS} epochs: try {fix}"))
        if row["r2_clover"] > self.best_clover + 1e-4:
            self.best_clover, self.clover_since = row["r2_clover"], 0
        else:
            self.clover_since += 1
            if self.clover_since >= CLOVER_STALL_EPOCHS and not self.cfg.use_cross_view_consistency:
                out.append(("clover", f"hint: r2_clover stuck for {CLOVER_STALL_EPOCHS} epochs: try --use-cross-view-consistency"))
        new = [msg for key, msg in out if key not in self.said]
        self.said.update(key for key, _ in out)
        return new
