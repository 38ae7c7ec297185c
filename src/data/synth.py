"""Synthetic pasture-biomass data in the exact Kaggle "CSIRO Image2Biomass" layout.

Lets the whole pipeline (schema checks, grouped CV, training, inference, scoring) run end to end
without the competition data. Metadata mimics the real distributions (docs/domain.md: States,
species, 2015 site visits, NDVI, plate height, skewed masses with zeros, WA Dead = 0), and the
five targets are painted into the pixels so that a model can learn them: soil background, brown
dead litter strokes, green grass blades and bluish-green clover trefoils whose numbers follow the
component masses, blade length following height, plus date stamps, frame borders and brightness
changes as nuisances.

    python -m src.synth --out data/demo --n-train 120 --n-test 30 --seed 0
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core.io_utils import write_csv
from ..core.progress import progress
from ..core.targets import KAGGLE_ORDER

TRAIN_COLUMNS = [
    "sample_id", "image_path", "Sampling_Date", "State", "Species",
    "Pre_GSHH_NDVI", "Height_Ave_cm", "target_name", "target",
]  # fmt: skip
COMPONENTS = ("Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g")

# Image counts of the real training set; visits are allotted to States in these proportions.
STATE_IMAGES = {"Tas": 138, "Vic": 112, "NSW": 75, "WA": 32}
# The 15 real species strings (BarleyGrass/Barleygrass case mismatch included), with a rough
# per-State frequency. Every species appears in some State.
SPECIES_BY_STATE = {
    "Tas": {
        "Ryegrass_Clover": 5, "Ryegrass": 2, "WhiteClover": 2, "Fescue": 2,
        "Phalaris_Ryegrass_Clover": 1, "Phalaris_Clover_Ryegrass_Barleygrass_Bromegrass": 1,
    },
    "Vic": {"Ryegrass_Clover": 4, "Ryegrass": 1, "Phalaris_Clover": 2, "Clover": 2, "Phalaris": 1, "Mixed": 1},
    "NSW": {
        "Lucerne": 3, "Phalaris": 2, "Phalaris_Clover": 2, "Fescue_CrumbWeed": 1, "Mixed": 1,
        "Phalaris_BarleyGrass_SilverGrass_SpearGrass_Clover_Capeweed": 1,
    },
    "WA": {"SubcloverLosa": 2, "SubcloverDalkeith": 2, "Clover": 1},
}  # fmt: skip
# Months per southern-hemisphere season; visits cycle through the seasons so all four occur.
SEASON_MONTHS = {"summer": (1, 2, 12), "autumn": (3, 4, 5), "winter": (6, 7, 8), "spring": (9, 10, 11)}
# Seasonal shifts of log Green and log Dead: green flush in spring, senescent litter in summer.
SEASON_SHIFT = {"summer": (-0.35, 0.35), "autumn": (-0.15, 0.15), "winter": (0.0, -0.15), "spring": (0.3, -0.3)}
# Real maxima: a quadrat holds only so much, so draws beyond these are scaled down to them.
MASS_CAP = {"Dry_Green_g": 158.0, "Dry_Dead_g": 84.0, "Dry_Clover_g": 72.0}
TOTAL_CAP = 186.0

# Paint colours (RGB). Hues are kept apart so that colour_fractions can separate the classes.
SOIL_RGB = np.array([94.0, 86.0, 76.0], np.float32)
DEAD_RGB = ((206, 176, 108), (184, 142, 80), (162, 118, 66))
GREEN_RGB = ((74, 142, 40), (98, 160, 52), (56, 112, 34))
CLOVER_RGB = ((40, 122, 100), (52, 140, 118), (32, 100, 86))
CARDBOARD_RGB = np.array([200.0, 170.0, 122.0], np.float32)
STAMP_RGB = (255, 140, 20)
# Fraction of a half covered per gram, before overlap: the bare-soil fraction is about
# exp(-COVER_PER_G * Total), i.e. ~50% at the mean Total and still ~10% at 150 g.
COVER_PER_G = 0.015
STAMP_P, BORDER_P = 0.25, 0.30
JPEG_QUALITY = 90
_SHIFT = 3  # cv2 sub-pixel bits: stroke coordinates in 1/8 px keep small images smooth


def _date_str(d: dt.date) -> str:
    return f"{d.year}/{d.month}/{d.day}"


def _state_counts(n: int) -> dict[str, int]:
    """Split n images over the States by the real proportions (largest remainder).

    A State left with fewer than 3 images gives them to the largest one, so every visit can
    hold 3-6 images.
    """
    total = sum(STATE_IMAGES.values())
    exact = {s: n * k / total for s, k in STATE_IMAGES.items()}
    counts = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: counts[s] - exact[s])[: n - sum(counts.values())]:
        counts[s] += 1
    for s in list(counts):
        if 0 < counts[s] < 3 and s != "Tas":
            counts["Tas"] += counts[s]
            counts[s] = 0
    return counts


def _visit_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Partition n into visit sizes of 3-6 (a lone visit smaller than 3 only when n < 3)."""
    sizes = []
    while n > 6:
        k = int(rng.integers(3, min(6, n - 3) + 1))
        sizes.append(k)
        n -= k
    if n:
        sizes.append(n)
    return sizes


def _pick_date(rng: np.random.Generator, season: str, state: str, used: set) -> dt.date:
    """A 2015 day in ``season`` not yet visited in ``state`` (a State + date is one visit)."""
    year = (dt.date(2015, 1, 1) + dt.timedelta(days=k) for k in range(365))
    free = [d for d in year if d.month in SEASON_MONTHS[season] and (state, d) not in used]
    if not free:
        raise ValueError(f"no {season} day of 2015 left for another {state} visit; ask for fewer images (<~4000)")
    date = free[int(rng.integers(len(free)))]
    used.add((state, date))
    return date


def _image_ids(rng: np.random.Generator, n: int, used: set) -> list[str]:
    ids = []
    while len(ids) < n:
        i = f"ID{int(rng.integers(1_000_000_000, 10_000_000_000))}"
        if i not in used:
            used.add(i)
            ids.append(i)
    return ids


def _visit_records(rng: np.random.Generator, n: int, used_visits: set, used_ids: set) -> list[dict]:
    """One dict per image: id, visit metadata, the five targets, NDVI and height."""
    visits = [(state, size) for state, k in _state_counts(n).items() for size in _visit_sizes(rng, k)]
    visits = [visits[i] for i in rng.permutation(len(visits))]
    seasons = list(SEASON_MONTHS)
    season_offset = int(rng.integers(4))
    records = []
    for v, (state, size) in enumerate(visits):
        season = seasons[(v + season_offset) % 4]
        date = _pick_date(rng, season, state, used_visits)
        names, weights = zip(*SPECIES_BY_STATE[state].items(), strict=True)
        species = str(rng.choice(names, p=np.array(weights) / sum(weights)))
        records += _visit_images(rng, size, state, date, season, species)
    for rec, image_id in zip(records, _image_ids(rng, len(records), used_ids), strict=True):
        rec["image_id"] = image_id
    return records


def _visit_images(rng, size: int, state: str, date: dt.date, season: str, species: str) -> list[dict]:
    """Masses share a visit effect (site productivity, season, species); images add noise."""
    prod = rng.normal(0.0, 0.45)
    g_shift, d_shift = SEASON_SHIFT[season]
    log_green = np.log(21.0) + prod + g_shift + rng.normal(0.0, 0.4)
    log_dead = np.log(8.5) + 0.5 * prod + d_shift + rng.normal(0.0, 0.65)
    has_clover = "lover" in species  # Clover, WhiteClover, SubcloverLosa, ... (case differs)
    clover_heavy = species in ("Clover", "WhiteClover", "SubcloverLosa", "SubcloverDalkeith")
    log_clover = np.log(14.0 if clover_heavy else 4.5) + 0.5 * prod + rng.normal(0.0, 0.5)
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)  # soil colour of the site
    out = []
    for _ in range(size):
        green = np.exp(log_green + rng.normal(0.0, 0.4))
        dead = 0.0 if state == "WA" or rng.random() < 0.03 else np.exp(log_dead + rng.normal(0.0, 0.5))
        clover = np.exp(log_clover + rng.normal(0.0, 0.6)) if has_clover and rng.random() < 0.9 else 0.0
        if clover > 0 and rng.random() < 0.08:
            green = 0.0  # bare clover swards exist (WA 2015-08-21); GDM stays > 0 through clover
        raw = [min(float(m), MASS_CAP[name]) for name, m in zip(COMPONENTS, (green, dead, clover), strict=True)]
        scale = min(1.0, TOTAL_CAP / sum(raw))
        masses = {name: round(m * scale, 4) for name, m in zip(COMPONENTS, raw, strict=True)}
        g, d, c = (masses[name] for name in COMPONENTS)
        gdm, total = g + c, g + d + c
        # NDVI follows the green fraction and green mass, plate height the total mass.
        ndvi = 0.2 + 0.45 * gdm / max(total, 1e-9) + 0.2 * np.tanh(gdm / 40.0) + rng.normal(0.0, 0.05)
        height = 0.35 * total**0.8 * np.exp(rng.normal(0.0, 0.35))
        out.append(
            {
                **masses,
                "GDM_g": round(gdm, 4),
                "Dry_Total_g": round(total, 4),
                "Sampling_Date": _date_str(date),
                "date": date,
                "State": state,
                "Species": species,
                "Pre_GSHH_NDVI": round(float(np.clip(ndvi, 0.16, 0.91)), 2),
                "Height_Ave_cm": round(float(np.clip(height, 1.0, 70.0)), 4),
                "tint": tint,
            }
        )
    return out


def _soil(rng: np.random.Generator, h: int, w: int, tint: np.ndarray) -> np.ndarray:
    """Brown-grey soil: site tint, low-frequency blotches and per-pixel grain."""
    blotch = rng.normal(0.0, 1.0, (h // 32 + 2, w // 32 + 2)).astype(np.float32)
    blotch = cv2.resize(blotch, (w, h), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
    light = (10.0 * blotch + 7.0 * grain)[..., None]
    return np.clip(SOIL_RGB * tint + light, 0, 255).astype(np.uint8)


def _strokes(rng, img, cols: tuple[int, int], n: int, length: float, thickness: int, colours, bend: float) -> None:
    """Draw n slightly bent strokes of about ``length`` px, centred in columns ``cols``, at random angles."""
    if n <= 0:
        return
    centre = rng.uniform((cols[0], 0.0), (cols[1], img.shape[0]), (n, 1, 2))
    angle = rng.uniform(0.0, np.pi, n)
    half = (length * rng.uniform(0.6, 1.4, n) / 2.0)[:, None]
    along = np.stack([np.cos(angle), np.sin(angle)], axis=1) * half
    across = np.stack([-np.sin(angle), np.cos(angle)], axis=1) * half * rng.normal(0.0, bend, (n, 1))
    pts = np.concatenate([centre - along[:, None], centre + across[:, None], centre + along[:, None]], axis=1)
    _draw(rng, img, pts, thickness, colours)


def _trefoils(rng, img, cols: tuple[int, int], n: int, radius: float, colours) -> None:
    """Draw n clover leaves centred in columns ``cols``: three overlapping discs (zero-length round-capped lines)."""
    if n <= 0:
        return
    centre = rng.uniform((cols[0], 0.0), (cols[1], img.shape[0]), (n, 1, 2))
    angle = rng.uniform(0.0, 2 * np.pi, (n, 1)) + np.array([0.0, 2.1, 4.2])
    leaf = centre + 0.9 * radius * np.stack([np.cos(angle), np.sin(angle)], axis=2)
    pts = np.repeat(leaf.reshape(-1, 1, 2), 2, axis=1)
    _draw(rng, img, pts, _disc(radius), colours)


def _draw(rng, img, pts: np.ndarray, thickness: int, colours) -> None:
    # One polylines call per colour group: vectorised, but still several shades per class.
    fixed = np.round(pts * (1 << _SHIFT)).astype(np.int32)
    group = rng.integers(len(colours), size=len(fixed))
    for k, colour in enumerate(colours):
        jitter = rng.uniform(0.9, 1.1)
        colour = tuple(min(255, int(c * jitter)) for c in colour)
        cv2.polylines(img, fixed[group == k], False, colour, thickness, cv2.LINE_AA, shift=_SHIFT)


def _counts(rec: dict, h: int, w: int) -> dict[str, tuple]:
    """Per class: stroke (count, length px, thickness px) or trefoil (count, radius px).

    Counts are chosen so that each class covers COVER_PER_G of the half per gram whatever the
    stroke size: coverage tracks mass, blade length shows height. The areas count the round
    caps and the ~1 px anti-aliased fringe on each side, which colour thresholds still see.
    """
    blade = h * float(np.clip(0.03 + 0.012 * rec["Height_Ave_cm"], 0.04, 0.4))
    blade_t = max(2, round(h / 220))
    litter, litter_t = 0.05 * h, max(2, round(h / 120))
    radius = max(1.0, 0.012 * h)
    leaf = 1.9 * np.pi * (_disc(radius) / 2 + 1) ** 2  # three overlapping discs
    per_g = COVER_PER_G * h * w
    return {
        "dead": (round(rec["Dry_Dead_g"] * per_g / ((litter + litter_t) * (litter_t + 2))), litter, litter_t),
        "green": (round(rec["Dry_Green_g"] * per_g / ((blade + blade_t) * (blade_t + 2))), blade, blade_t),
        "clover": (round(rec["Dry_Clover_g"] * per_g / leaf), radius),
    }


def _disc(radius: float) -> int:
    return max(2, round(2 * radius))


def render(rec: dict, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Paint one quadrat photo (RGB uint8, height x width) whose content follows ``rec``."""
    hw = width // 2
    # Both halves get the same counts (same density), only the positions differ. Painting them
    # on one canvas, layer by layer, leaves no seam between the halves.
    counts = _counts(rec, height, hw)
    img = _soil(rng, height, width, rec["tint"])
    halves = ((0, hw), (hw, width))
    # Litter lies under the grass, clover leaves sit on top.
    for cols in halves:
        _strokes(rng, img, cols, *counts["dead"], DEAD_RGB, bend=0.1)
    for cols in halves:
        _strokes(rng, img, cols, *counts["green"], GREEN_RGB, bend=0.2)
    for cols in halves:
        _trefoils(rng, img, cols, *counts["clover"], CLOVER_RGB)
    if rng.random() < BORDER_P:
        _border(rng, img)
    img = cv2.convertScaleAbs(img, alpha=float(rng.uniform(0.85, 1.15)))  # exposure varies per photo
    if rng.random() < STAMP_P:
        _stamp(img, rec["date"])
    return img


def _border(rng, img: np.ndarray) -> None:
    """Cardboard frame visible along 1-4 edges of the photo."""
    h, w = img.shape[:2]
    colour = np.clip(CARDBOARD_RGB * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
    for side in rng.permutation(4)[: rng.integers(1, 5)]:
        t = max(1, int(h * rng.uniform(0.02, 0.05)))
        edge = (np.s_[:t], np.s_[h - t :], np.s_[:, :t], np.s_[:, w - t :])[side]
        img[edge] = colour


def _stamp(img: np.ndarray, date: dt.date) -> None:
    """Orange camera date stamp in the bottom-right corner."""
    h, w = img.shape[:2]
    scale, thick = h / 450, max(2, round(h / 180))
    text = date.strftime("%Y/%m/%d")
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    org = (w - tw - h // 25, h - h // 25)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, STAMP_RGB, thick, cv2.LINE_AA)


def color_fractions(img_rgb: np.ndarray) -> np.ndarray:
    """Fractions of pixels that look like (green grass, clover, dead litter, soil/other).

    Plain HSV thresholds (OpenCV hue 0-180): grass is yellowish green, clover bluish green,
    litter a bright saturated brown/straw; everything else counts as soil. Sums to 1.
    """
    hsv = cv2.cvtColor(np.ascontiguousarray(img_rgb), cv2.COLOR_RGB2HSV)
    hue, sat, val = (hsv[..., i].astype(np.int16) for i in range(3))
    plant = (sat >= 90) & (val >= 60)
    green = plant & (hue >= 33) & (hue < 66)
    clover = plant & (hue >= 66) & (hue < 100)
    dead = (sat >= 85) & (val >= 110) & (hue >= 5) & (hue < 33)
    fr = np.array([green.mean(), clover.mean(), dead.mean()])
    return np.append(fr, 1.0 - fr.sum())


def _write_images(records: list[dict], folder: Path, seed: int, split: int, width: int, height: int, bar) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        # Each image has its own stream: its pixels do not depend on the other images.
        rng = np.random.default_rng([seed, split, i])
        bgr = cv2.cvtColor(render(rec, rng, width, height), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {rec['image_id']}")
        (folder / f"{rec['image_id']}.jpg").write_bytes(buf.tobytes())
        bar.update(1)


def _long_rows(records: list[dict], split: str) -> pd.DataFrame:
    """Kaggle long format: one row per image and target, targets in Kaggle order."""
    rows = [
        {**rec, "sample_id": f"{rec['image_id']}__{t}", "image_path": f"{split}/{rec['image_id']}.jpg",
         "target_name": t, "target": rec[t]}
        for rec in records for t in KAGGLE_ORDER
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=TRAIN_COLUMNS)


def generate(out: Path, n_train: int, n_test: int, seed: int = 0, width: int = 1000, height: int = 500) -> None:
    """Write a synthetic Kaggle-layout dataset (CSVs and JPEGs) into ``out``; same seed, same bytes."""
    if n_train < 1 or n_test < 0 or width < 32 or height < 16:
        raise ValueError(
            f"need n_train >= 1, n_test >= 0, width >= 32, height >= 16; got {n_train}, {n_test}, {width}x{height}"
        )
    out = Path(out)
    rng = np.random.default_rng(seed)
    used_visits: set = set()
    used_ids: set = set()
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        # Sorted by id like the Kaggle files, which interleaves the visits.
        splits[split] = sorted(_visit_records(rng, n, used_visits, used_ids), key=lambda r: r["image_id"])
    with progress(total=n_train + n_test, desc="synth images", unit="img") as bar:
        for k, (split, records) in enumerate(splits.items()):
            _write_images(records, out / split, seed, k, width, height, bar)
    # CSVs last: a run that dies half way leaves no CSV pointing at missing images.
    test = _long_rows(splits["test"], "test")
    write_csv(out / "train.csv", _long_rows(splits["train"], "train"))
    write_csv(out / "test.csv", test[["sample_id", "image_path", "target_name"]])
    write_csv(out / "sample_submission.csv", test[["sample_id"]].assign(target=0))
    write_csv(out / "test_solution.csv", test[["sample_id", "target"]])
