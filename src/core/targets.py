"""The five biomass targets, their metric weights and the mass relations between them.

Labels obey GDM = Green + Clover and Total = Green + Dead + Clover, so a model predicts three
of the five directly and derives the other two. Which three is the guide's ``--train-dead`` /
``--train-clover`` choice; everything here works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

# Canonical column order used everywhere inside the project (models, OOF files, metrics).
TARGETS: tuple[str, ...] = ("Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "GDM_g", "Dry_Total_g")
SHORT: dict[str, str] = {
    "Dry_Green_g": "green",
    "Dry_Dead_g": "dead",
    "Dry_Clover_g": "clover",
    "GDM_g": "gdm",
    "Dry_Total_g": "total",
}
WEIGHTS: dict[str, float] = {
    "Dry_Green_g": 0.1,
    "Dry_Dead_g": 0.1,
    "Dry_Clover_g": 0.1,
    "GDM_g": 0.2,
    "Dry_Total_g": 0.5,
}
# Kaggle files list the targets alphabetically per image.
KAGGLE_ORDER: tuple[str, ...] = tuple(sorted(TARGETS))
# Grams in the 70 cm x 30 cm quadrat (0.21 m^2) -> kg dry matter per hectare.
G_PER_QUADRAT_TO_KG_PER_HA = 10.0 / 0.21
# Label relations hold to ~1e-4 in the real data; beyond this a row is suspicious.
RELATION_TOLERANCE_G = 0.01


def direct_targets(train_dead: bool = False, train_clover: bool = True) -> tuple[str, ...]:
    """The three targets a model predicts directly; the other two are derived.

    Green is always direct. ``train_clover`` picks Clover over GDM, ``train_dead`` picks Dead
    over Total (the guide's defaults: Green, Clover, Total direct; GDM and Dead derived).
    """
    return (
        "Dry_Green_g",
        "Dry_Clover_g" if train_clover else "GDM_g",
        "Dry_Dead_g" if train_dead else "Dry_Total_g",
    )


def _relu(x):
    # Works for numpy arrays, torch tensors and floats without importing torch here.
    return x.clamp(min=0) if hasattr(x, "clamp") else (x > 0) * x


def complete(direct: dict, clip: bool = True) -> dict:
    """Fill in the two derived targets from any valid set of three direct ones.

    A derived mass that would be negative (a component larger than its total) is clipped at 0
    and the total it came from is re-summed, so the outputs always obey both relations: e.g. a
    predicted Total below GDM gives Dead = 0 and Total = GDM. ``clip=False`` keeps the raw
    differences instead (negative masses included), for the penalties that train them away.
    """
    out = dict(direct)
    green = out["Dry_Green_g"]
    if "Dry_Clover_g" in out and "GDM_g" not in out:
        out["GDM_g"] = green + out["Dry_Clover_g"]
    elif "GDM_g" in out and "Dry_Clover_g" not in out:
        out["Dry_Clover_g"] = out["GDM_g"] - green
        if clip:
            out["Dry_Clover_g"] = _relu(out["Dry_Clover_g"])
            out["GDM_g"] = green + out["Dry_Clover_g"]
    if "Dry_Dead_g" in out and "Dry_Total_g" not in out:
        out["Dry_Total_g"] = out["GDM_g"] + out["Dry_Dead_g"]
    elif "Dry_Total_g" in out and "Dry_Dead_g" not in out:
        out["Dry_Dead_g"] = out["Dry_Total_g"] - out["GDM_g"]
        if clip:
            out["Dry_Dead_g"] = _relu(out["Dry_Dead_g"])
            out["Dry_Total_g"] = out["GDM_g"] + out["Dry_Dead_g"]
    missing = [t for t in TARGETS if t not in out]
    if missing:
        raise ValueError(f"cannot derive {missing} from {sorted(direct)}")
    return out


# Columns of TARGETS as combinations of the three components (Green, Dead, Clover).
COMPOSITION = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1))


def reconcile(five):
    """Least-squares projection of five free predictions (..., 5) onto the label relations:
    the closest (Green, Dead, Clover) >= 0, expanded back to five consistent targets."""
    import torch

    a = torch.tensor(COMPOSITION, dtype=five.dtype, device=five.device)  # (5, 3)
    components = (five @ a @ torch.linalg.inv(a.T @ a)).clamp(min=0)
    return components @ a.T


def consistent(five):
    """Five masses (..., 5) that already obey the relations -> the same with negative components
    clipped at 0 and the totals re-summed (a Total below GDM reports Dead = 0, Total = GDM)."""
    import torch

    g, d, c = (five[..., i].clamp(min=0) for i in range(3))  # TARGETS begins Green, Dead, Clover
    return torch.stack([g, d, c, g + c, g + d + c], dim=-1)
