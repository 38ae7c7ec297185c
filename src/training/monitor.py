"""The guide's monitoring checklist as live hints, each printed once per fold."""

from __future__ import annotations

CLOVER_STALL_EPOCHS = 10


class Hints:
    def __init__(self):
        self.said: set[str] = set()
        self.best_clover = float("-inf")
        self.clover_since = 0

    def check(self, epoch: int, row: dict) -> list[str]:
        out = []
        if row["val_loss"] > 2 * row["train_loss"] > 0:
            out.append(("overfit", "hint: val loss > 2x train loss (overfitting): reduce the LR (--lr 1e-4 --backbone-lr 5e-6) or regularise"))
        if epoch + 1 >= 20 and row["r2_dead"] < 0.2:
            out.append(("dead", "hint: r2_dead < 0.2 after 20 epochs: try --train-dead"))
        if row["r2_clover"] > self.best_clover + 1e-4:
            self.best_clover, self.clover_since = row["r2_clover"], 0
        else:
            self.clover_since += 1
            if self.clover_since >= CLOVER_STALL_EPOCHS:
                out.append(("clover", f"hint: r2_clover stuck for {CLOVER_STALL_EPOCHS} epochs: try --use-cross-view-consistency"))
        new = [msg for key, msg in out if key not in self.said]
        self.said.update(key for key, _ in out)
        return new
